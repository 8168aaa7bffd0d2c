# -*- coding: utf-8 -*-
# Copyright: virtnode.kvm contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one runner for helper commands whose failure is an error (qemu-img, mount, losetup, lvm).

Commands run from an argument list (never a shell), with stdin closed and a timeout, and every
way they can fail becomes a VirtnodeError naming the command, with its own message and exit
status in the details. (Probes that only report what they find, such as host facts, use
``host.run_command``, which answers None instead.)
"""

from __future__ import annotations

import subprocess

from ansible_collections.virtnode.kvm.plugins.module_utils.common.errors import VirtnodeError

DEFAULT_TIMEOUT = 60


def run_checked(argv, timeout=DEFAULT_TIMEOUT, label=None, install_hint=None):
    """Run ``argv`` and return its stdout (text).

    ``label`` names the command in messages (default: the whole command line);
    ``install_hint`` says where a missing command comes from (``Debian: qemu-utils``).
    """
    argv = [str(arg) for arg in argv]
    label = label or ' '.join(argv)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as err:
        hint = ' (%s)' % install_hint if install_hint else ''
        raise VirtnodeError('%s is not installed%s' % (argv[0], hint), {'argv': argv}) from err
    except subprocess.TimeoutExpired as err:
        raise VirtnodeError('%s timed out after %ss' % (label, timeout), {'argv': argv}) from err
    except OSError as err:
        raise VirtnodeError('cannot run %s: %s' % (label, err.strerror or err), {'argv': argv}) from err
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip() or 'exit status %d' % proc.returncode
        raise VirtnodeError('%s failed: %s' % (label, message), {'argv': argv, 'rc': proc.returncode})
    return proc.stdout
