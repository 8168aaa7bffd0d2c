#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: volume
short_description: Create, snapshot, clone, extend and delete disk images and volumes of a VDSM storage domain
version_added: 0.1.0
description:
  - Volumes live in C(images/<image>/<volume>) with a C(.meta) file (VDSM format) and, except on local
    domains, a C(.lease) sanlock resource.
  - On a block domain (iSCSI, FC) a volume is a logical volume named after it and tagged C(IU_<image>),
    C(PU_<parent>) and C(MD_<slot>), its metadata the 512-byte record of slot C(<slot>) of the domain's C(metadata)
    LV and its lease at (100 + slot) x ALIGNMENT of C(leases), as VDSM has them. RAW volumes are preallocated LVs of
    whole extents (the capacity reported is the LV's; V(SPARSE) RAW is refused); sparse COW volumes start at one
    1 GiB chunk (or their capacity if smaller).
  - A new volume is written ILLEGAL first and marked LEGAL when complete.
  - With O(parent_volume_uuid) the new volume is a COW snapshot whose backing file is the parent
    (C(qemu-img create -b <parent> -F <format>)); the parent becomes INTERNAL.
  - With O(clone_from) the new volume is a full copy of another volume (template), its chain flattened. On a block
    domain the source is a volume of a file domain or of the same domain, and the new logical volume gets what
    C(qemu-img measure) says the copy needs (at least the usual start of a thin volume).
  - With O(import_from) the new volume is a copy of a disk image file on the managed host or at an http(s) URL
    (raw, qcow2, vmdk, vdi or vhdx, the format read from the image's content, never from its name), converted with
    C(qemu-img convert) to O(format). A URL is downloaded and its O(import_from.checksum) compared before the SPM
    changes anything; an image that names other files (a backing file, a qcow2 external data file, a VMDK descriptor
    with extents) or is encrypted is refused.
  - With O(export_to) the volume (its chain flattened) is copied to a file on the managed host, written under a
    temporary name and renamed into place once complete. Exporting only reads, so it runs on any host of the pool.
  - With O(template) the new volume is a template volume (VDSM's VOLTYPE V(SHARED)), the read-only base of thin clones in
    other images. A thin clone is a COW volume with O(parent_volume_uuid) the template and O(parent_image_uuid) its image;
    the template's files are hard-linked into the clone's image, as VDSM shares them. A template is never a VM's
    writable disk, and deleting it (or its image) is refused while images based on it exist. File domains only for now.
  - A larger O(size) on an existing leaf volume extends it; shrinking is refused.
  - V(absent) deletes one volume (it must have no children) or, without O(volume_uuid), the whole image, renaming
    it C(_remove_me_<image>) first.
  - V(prepared) is VDSM's prepareImage, on the host where a VM is about to use the volume (the destination of a
    migration; M(virtnode.kvm.vm) does it itself when it starts a VM). On a block domain the volume and its parents
    are checked LEGAL, their logical volumes activated on this host and linked in the image directory; on a file
    domain the chain is only checked, and with O(block_device) the volume is also presented as a block device as
    M(virtnode.kvm.vm)'s O(virtnode.kvm.vm#module:disks[].type=block) presents it (for a thin VM migrating here).
    It changes nothing on storage and runs on any host of the pool.
  - Changes run only on the SPM of the domain's pool; elsewhere the task fails naming the SPM host. Each change
    runs as a fenced SPM task, which holds a sanlock lease of its own in the master domain's lockspace and checks before
    every metadata write that this host still holds the SPM lease with the same LVER, so a task that outlives the
    lease writes nothing more.
  - A volume that an interrupted create left behind (still ILLEGAL, or a data file without C(.meta)) is removed and
    created again by the next V(present) run (action V(remove_leftover)); an ILLEGAL volume with children fails.
options:
  sd_uuid:
    description: Domain holding the image; it must be attached to a pool.
    type: str
    required: true
  image_uuid:
    description: Image (disk) UUID.
    type: str
    required: true
  volume_uuid:
    description: Volume UUID; required for V(present).
    type: str
  size:
    description:
      - Capacity, in bytes or with a unit (V(10G), V(512MiB)); at least 1 MiB, a multiple of 512 bytes.
      - Defaults to the parent's or the clone source's size.
    type: str
  format:
    description: Volume format.
    type: str
    choices: [RAW, COW]
    default: COW
  allocation:
    description: V(SPARSE) (thin) or V(PREALLOCATED).
    type: str
    choices: [SPARSE, PREALLOCATED]
    default: SPARSE
  initial_size:
    description:
      - Space to give a new COW volume on a block storage domain at once, in bytes or with a unit, as VDSM's
        C(initial_size); a sparse volume's logical volume gets it x 1.1 (VDSM's qcow2 overhead) instead of one chunk
        (1 GiB), rounded up to whole extents. At most the capacity x 1.1.
      - Used only when the volume is created. Refused for RAW volumes and on file domains, as VDSM refuses it.
    type: str
  parent_volume_uuid:
    description: Volume of the same image to snapshot (the current leaf).
    type: str
  parent_image_uuid:
    description:
      - Image of O(parent_volume_uuid) when it is a template of another image (VOLTYPE V(SHARED)); the new volume is
        then a thin clone of the template. Defaults to O(image_uuid) (a snapshot in the same image).
    type: str
  template:
    description:
      - Create the volume as a template (VOLTYPE V(SHARED)), usually with O(clone_from) or O(import_from) into a new image.
      - Used only when the volume is created; an existing volume that is not a template is refused.
    type: bool
    default: false
  clone_from:
    description: Volume to copy into the new volume.
    type: dict
    suboptions:
      sd_uuid:
        description: Domain of the source; defaults to O(sd_uuid).
        type: str
      image_uuid:
        description: Image of the source.
        type: str
        required: true
      volume_uuid:
        description: Source volume.
        type: str
        required: true
  import_from:
    description:
      - Disk image to copy into the new volume; nothing is imported into a volume that exists (the task reports no
        change, as for a created volume).
      - O(size), when given, is at least the image's virtual size; by default the volume has the image's size.
    type: dict
    suboptions:
      path:
        description: Absolute path of the image on the managed host (a regular file outside C(/rhev/data-center)).
        type: path
      url:
        description: http or https URL to download the image from.
        type: str
      checksum:
        description:
          - Checksum the image (the downloaded file) must have, as V(<algorithm>:<hex digest>); V(sha256), V(sha384),
            V(sha512), V(sha1) or V(md5). A mismatch fails the task with nothing changed.
        type: str
      format:
        description: The image's format, when it must not be probed (a raw image whose first bytes look like another format).
        type: str
        choices: [raw, qcow2, vmdk, vdi, vhdx]
      download_dir:
        description: Directory on the managed host the URL is downloaded to (the file is removed after the import); by default the system temporary directory.
        type: path
  export_to:
    description: File to copy the volume to (its chain flattened), once; see O(export_to.force).
    type: dict
    suboptions:
      path:
        description: Absolute path of the file on the managed host; its directory must exist.
        type: path
        required: true
      format:
        description: Format of the file.
        type: str
        choices: [qcow2, raw]
        default: qcow2
      force:
        description: Copy again when the file exists (by default an existing file is left as it is).
        type: bool
        default: false
  description:
    description: Volume description (cut to 210 characters).
    type: str
    default: ''
  disk_type:
    description: VDSM disk type.
    type: str
    default: DATA
    choices: [DATA, ISOF, MEMD, MEMM, OVFS]
  block_device:
    description:
      - With O(state=prepared) on a file domain, present the volume as a block device too, through a loop device
        linked at C(/run/virtnode/block/<sd>/<image>/<volume>), the path M(virtnode.kvm.vm) gives a disk with
        O(virtnode.kvm.vm#module:disks[].type=block). The destination of a migration of such a VM needs it, as its
        QEMU opens that path. The VM's stop (or the migration source, once the VM left) releases it.
      - A block domain's volumes are block devices already; there it changes nothing.
    type: bool
    default: false
  state:
    description: Desired state. V(prepared) needs O(volume_uuid).
    type: str
    choices: [present, absent, prepared]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - virtnode.kvm.failure
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
  action_group:
    support: full
    membership:
      - virtnode.kvm.all
requirements:
  - qemu-img (Debian qemu-utils) and python3-sanlock on the managed host
seealso:
  - module: virtnode.kvm.spm
  - module: virtnode.kvm.storage_info
author:
  - virtnode.kvm maintainers (@virtnode)
"""

EXAMPLES = r"""
# not runnable in the lab: needs an attached domain and this host being the SPM of its pool
- name: Create a 10 GiB thin disk
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21
    size: 10G
    format: COW
    allocation: SPARSE

- name: Take a snapshot (a new leaf on top of it)
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10
    parent_volume_uuid: 9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21

- name: Extend the leaf to 20 GiB
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10
    size: 20G

- name: On the host a VM on this disk migrates to, activate and link the leaf's chain first (prepareImage)
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10
    state: prepared

- name: Make a template from a disk (a flattened copy in a new image)
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 7e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b
    volume_uuid: 8f2e3d4c-5b6a-4f7e-9d8c-0b1a2f3e4d5c
    template: true
    clone_from:
      image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
      volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10

- name: A VM's disk as a thin clone of that template
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d
    volume_uuid: 1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e
    parent_image_uuid: 7e1d2c3b-4a5f-4e6d-8c7b-9a0f1e2d3c4b
    parent_volume_uuid: 8f2e3d4c-5b6a-4f7e-9d8c-0b1a2f3e4d5c

- name: Import a VMware disk downloaded from a web server, checked against its checksum
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 6a0f3b52-1d4e-4c8b-9a7e-2b5c8d1e4f30
    volume_uuid: 2b7e9c14-5a3d-4f6e-8c1b-7d9a0e2f4b63
    import_from:
      url: https://images.example.com/appliance.vmdk
      checksum: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    format: COW

- name: Export a disk to a qcow2 file on the host
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    volume_uuid: 1c8f7c31-6a0e-4b7e-9d1a-5e2f4b3c2d10
    export_to:
      path: /var/lib/backup/disk1.qcow2

- name: Delete the whole disk
  virtnode.kvm.volume:
    sd_uuid: 5f2d1c7e-8a8b-4f57-9d2b-7c3b1e0a6f11
    image_uuid: 3e1c9c55-37a3-4f3f-a7cd-7e3a0cf2b6f4
    state: absent
"""

RETURN = r"""
volume:
  description: The volume after the task (V(null) when absent or not yet created in check mode).
  type: dict
  returned: success
  contains:
    volume_uuid:
      description: Volume UUID.
      type: str
      returned: always
      sample: 9d3c0a50-2f4b-4e7e-8f64-0d8e5f1b9a21
    path:
      description: Path of the volume's data file; on a block domain its link to C(/dev/<sd>/<volume>) (present while
        the LV is active on this host).
      type: str
      returned: always
      sample: /rhev/data-center/mnt/nfs.example.com:_exports_data/5f2d.../images/3e1c.../9d3c...
    format:
      description: V(RAW) or V(COW).
      type: str
      returned: always
      sample: COW
    allocation:
      description: V(SPARSE) or V(PREALLOCATED).
      type: str
      returned: always
      sample: SPARSE
    capacity:
      description: Virtual size in bytes.
      type: int
      returned: always
      sample: 10737418240
    parent:
      description: Parent volume UUID, all zeros for none.
      type: str
      returned: always
      sample: 00000000-0000-0000-0000-000000000000
    role:
      description: V(LEAF), V(INTERNAL) or V(SHARED).
      type: str
      returned: always
      sample: LEAF
    legality:
      description: V(LEGAL) or V(ILLEGAL).
      type: str
      returned: always
      sample: LEGAL
chain:
  description: The image's volumes after the task, base first.
  type: list
  elements: dict
  returned: success
  sample: []
actions:
  description:
    - What was done (or would be done in check mode), in order.
    - One of V(create), V(snapshot), V(clone), V(thin_clone), V(import), V(template) (after the creation it qualifies),
      V(extend), V(export), V(delete_volume), V(delete_image), V(remove_leftover), V(prepare).
  type: list
  elements: str
  returned: success
  sample: [create]
imported:
  description: The image copied into the new volume by O(import_from) (V(null) when nothing was imported).
  type: dict
  returned: success
  contains:
    source:
      description: The path or URL imported.
      type: str
      returned: always
    format:
      description: The image's format, as read from its content.
      type: str
      returned: always
      sample: vmdk
    virtual_size:
      description: The image's virtual size in bytes.
      type: int
      returned: always
    bytes:
      description: Size of the image file (downloaded bytes for a URL).
      type: int
      returned: always
    capacity:
      description: Capacity of the new volume.
      type: int
      returned: always
    progress:
      description: Last progress figure C(qemu-img convert) printed, in percent (100 when the copy completed).
      type: float
      returned: always
      sample: 100.0
    seconds:
      description: Time the copy took.
      type: float
      returned: always
exported:
  description: The copy O(export_to) made (V(null) when nothing was exported), with the keys of RV(imported) and these.
  type: dict
  returned: success
  contains:
    destination:
      description: The file written.
      type: str
      returned: always
    destination_format:
      description: Its format.
      type: str
      returned: always
      sample: qcow2
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.virtnode.kvm.plugins.module_utils.common import module as module_run
from ansible_collections.virtnode.kvm.plugins.module_utils.storage import volume_state


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sd_uuid=dict(type='str', required=True),
            image_uuid=dict(type='str', required=True),
            volume_uuid=dict(type='str'),
            size=dict(type='str'),
            initial_size=dict(type='str'),
            format=dict(type='str', default='COW', choices=['RAW', 'COW']),
            allocation=dict(type='str', default='SPARSE', choices=['SPARSE', 'PREALLOCATED']),
            parent_volume_uuid=dict(type='str'),
            parent_image_uuid=dict(type='str'),
            template=dict(type='bool', default=False),
            clone_from=dict(type='dict', options=dict(
                sd_uuid=dict(type='str'),
                image_uuid=dict(type='str', required=True),
                volume_uuid=dict(type='str', required=True),
            )),
            import_from=dict(type='dict', options=dict(
                path=dict(type='path'),
                url=dict(type='str'),
                checksum=dict(type='str', no_log=False),
                format=dict(type='str', choices=['raw', 'qcow2', 'vmdk', 'vdi', 'vhdx']),
                download_dir=dict(type='path'),
            ), mutually_exclusive=[('path', 'url')], required_one_of=[('path', 'url')]),
            export_to=dict(type='dict', options=dict(
                path=dict(type='path', required=True),
                format=dict(type='str', default='qcow2', choices=['qcow2', 'raw']),
                force=dict(type='bool', default=False),
            )),
            description=dict(type='str', default=''),
            disk_type=dict(type='str', default='DATA', choices=['DATA', 'ISOF', 'MEMD', 'MEMM', 'OVFS']),
            state=dict(type='str', default='present', choices=['present', 'absent', 'prepared']),
            block_device=dict(type='bool', default=False),
        ),
        mutually_exclusive=[('parent_volume_uuid', 'clone_from'), ('import_from', 'clone_from'),
                            ('import_from', 'parent_volume_uuid')],
        supports_check_mode=True,
    )
    module_run.run(module, volume_state.run_module)


if __name__ == '__main__':
    main()
