# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vm module's options: one VM's spec, and the bulk form's list of them (``vms``)."""

from __future__ import annotations

from ansible_collections.virtnode.kvm.plugins.module_utils.common.hooks import DEFAULT_HOOKS_DIR
from ansible_collections.virtnode.kvm.plugins.module_utils.libvirt import connection as libvirt_conn
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import converge as vm_converge
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import lifecycle as vm_lifecycle
from ansible_collections.virtnode.kvm.plugins.module_utils.vm import spec as vm_spec

MUTUALLY_EXCLUSIVE = [('boot_order', 'kernel'), ('save_path', 'saved_volume')]
REQUIRED_BY = {'initrd': 'kernel', 'cmdline': 'kernel'}
# Options of the whole run in the bulk form, and options an item of it cannot have (a migration
# is one VM's operation between two hosts).
RUN_OPTIONS = ('vms', 'parallel') + tuple(libvirt_conn.LIBVIRT_ARGUMENT_SPEC)
NOT_IN_BULK = ('migrate_to', 'migrate_uri', 'migrate_transport', 'migrate_unsafe', 'migrate_options')
DEFAULT_PARALLEL = 8


def argument_spec():
    """The options of one VM: the vm module's, and each item of its ``vms``."""
    disk = dict(
        path=dict(type='path'), domain_id=dict(type='str'), image_id=dict(type='str'), volume_id=dict(type='str'),
        type=dict(type='str', choices=['file', 'block']),
        format=dict(type='str', choices=list(vm_spec.DISK_FORMATS), default='raw'),
        bus=dict(type='str', choices=list(vm_spec.DISK_BUSES), default='virtio'),
        target=dict(type='str'),
        cache=dict(type='str', choices=list(vm_spec.DISK_CACHES), default='none'),
        io=dict(type='str', choices=list(vm_spec.DISK_IO)),
        error_policy=dict(type='str', choices=list(vm_spec.ERROR_POLICIES), default='stop'),
        readonly=dict(type='bool', default=False),
        serial=dict(type='str'),
        discard=dict(type='str', choices=list(vm_spec.DISK_DISCARD)),
        detect_zeroes=dict(type='str', choices=list(vm_spec.DISK_DETECT_ZEROES)),
        iotune=dict(type='dict', options=dict((key, dict(type='int')) for key in vm_spec.IOTUNE_KEYS)),
        lun=dict(type='bool', default=False),
    )
    nic = dict(bridge=dict(type='str'), network=dict(type='str'), mac=dict(type='str'),
               model=dict(type='str', choices=list(vm_spec.NIC_MODELS), default='virtio'),
               link_state=dict(type='str', choices=list(vm_spec.NIC_LINK_STATES)), mtu=dict(type='int'),
               queues=dict(type='int'), filter=dict(type='str'), filter_parameters=dict(type='dict'))
    return libvirt_conn.libvirt_argument_spec(
        name=dict(type='str', required=True),
        uuid=dict(type='str'),
        state=dict(type='str', choices=list(vm_converge.STATES), default='running'),
        persistent=dict(type='bool'),
        domain_type=dict(type='str', choices=list(vm_spec.DOMAIN_TYPES)),
        machine=dict(type='str'),
        memory=dict(type='str'),
        max_memory=dict(type='str'),
        vcpus=dict(type='int'),
        max_vcpus=dict(type='int'),
        cpu_pinning=dict(type='dict'),
        emulator_pinning=dict(type='str'),
        cpu_topology=dict(type='dict', options=dict(sockets=dict(type='int', default=1), cores=dict(type='int', default=1),
                                                    threads=dict(type='int', default=1))),
        cpu_model=dict(type='str'),
        boot_order=dict(type='list', elements='str', choices=list(vm_spec.BOOT_DEVICES)),
        kernel=dict(type='path'),
        initrd=dict(type='path'),
        cmdline=dict(type='str'),
        disks=dict(type='list', elements='dict', options=disk),
        nics=dict(type='list', elements='dict', options=nic),
        cdrom=dict(type='str'),
        graphics=dict(type='dict', options=dict(
            type=dict(type='str', choices=list(vm_spec.GRAPHICS_TYPES), default='vnc'),
            listen=dict(type='str', default='127.0.0.1'),
            password=dict(type='str', no_log=True),
            password_valid_to=dict(type='str', no_log=False))),
        console_log=dict(type='bool'),
        custom_properties=dict(type='dict'),
        lease=dict(type='dict', options=dict(sd_id=dict(type='str'), lease_id=dict(type='str'), path=dict(type='path'),
                                             offset=dict(type='int', default=0))),
        force=dict(type='bool', default=False),
        shutdown_mode=dict(type='str', choices=list(vm_lifecycle.SHUTDOWN_MODES), default='auto'),
        timeout=dict(type='int', default=120),
        save_path=dict(type='path'),
        saved_volume=dict(type='dict', options=vm_spec.VOLUME_REF_OPTIONS),
        migrate_to=dict(type='str'),
        migrate_transport=dict(type='str', choices=['tcp', 'tls'], default='tls'),
        migrate_uri=dict(type='str'),
        migrate_unsafe=dict(type='bool', default=False),
        migrate_options=dict(type='dict', options=dict(
            max_downtime_ms=dict(type='int'), bandwidth=dict(type='int'), timeout=dict(type='int', default=300),
            auto_converge=dict(type='bool', default=False), compressed=dict(type='bool', default=False),
            data_uri=dict(type='str'))),
        hooks_dir=dict(type='path', default=DEFAULT_HOOKS_DIR),
        watchdog=dict(type='dict', options=dict(
            model=dict(type='str', choices=list(vm_spec.WATCHDOG_MODELS), default='i6300esb'),
            action=dict(type='str', choices=list(vm_spec.WATCHDOG_ACTIONS), default='reset'),
            state=dict(type='str', choices=['present', 'absent'], default='present'))),
        rng=dict(type='dict', options=dict(
            backend=dict(type='str', choices=list(vm_spec.RNG_BACKENDS), default='/dev/urandom'),
            rate_bytes=dict(type='int'), rate_period_ms=dict(type='int'),
            state=dict(type='str', choices=['present', 'absent'], default='present'))),
        video=dict(type='str', choices=list(vm_spec.VIDEO_MODELS)),
        tablet=dict(type='bool'),
        guest_agent=dict(type='bool'),
        numa_cells=dict(type='list', elements='dict', options=dict(cpus=dict(type='str', required=True),
                                                                   memory=dict(type='str', required=True))),
        numa_tune=dict(type='dict', options=dict(mode=dict(type='str', choices=list(vm_spec.NUMA_MODES), default='strict'),
                                                 nodeset=dict(type='str', required=True))),
        memory_hotplug=dict(type='dict', options=dict(max=dict(type='str', required=True),
                                                      slots=dict(type='int', default=vm_spec.DEFAULT_MEMORY_SLOTS))),
        hugepages=dict(type='str'),
        firmware=dict(type='str', choices=list(vm_spec.FIRMWARES)),
        secure_boot=dict(type='bool'),
        tpm=dict(type='dict', options=dict(
            model=dict(type='str', choices=list(vm_spec.TPM_MODELS), default='crb'),
            state=dict(type='str', choices=['present', 'absent'], default='present'))),
        cloud_init=dict(type='dict', options=dict(user_data=dict(type='raw'), meta_data=dict(type='raw'),
                                                  network_config=dict(type='raw'))),
    )


def module_argument_spec():
    """The vm module's options: one VM (``name`` ...) or many (``vms``, each item one VM's options)."""
    spec = argument_spec()
    spec['name'] = dict(type='str')
    spec['vms'] = dict(type='list', elements='dict')
    spec['parallel'] = dict(type='int', default=DEFAULT_PARALLEL)
    return spec


def item_argument_spec():
    """The options of one item of ``vms``."""
    spec = argument_spec()
    for name in RUN_OPTIONS + NOT_IN_BULK:
        spec.pop(name, None)
    return spec
