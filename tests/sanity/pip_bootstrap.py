# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the pip bootstrap script ansible-test downloads for its venvs.

ansible-test fetches get-pip.py from a host outside the package registries this
project's machines reach; `make sanity` places this file in ansible-test's cache
instead. It seeds pip from the interpreter's own ensurepip, then installs what
ansible-test asked for from PyPI.
"""

from __future__ import annotations

import subprocess
import sys


def main() -> int:
    subprocess.check_call([sys.executable, "-I", "-m", "ensurepip", "--upgrade"], stdout=subprocess.DEVNULL)
    # get-pip.py's own flags; plain pip does not know them.
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    return subprocess.call([sys.executable, "-I", "-m", "pip", "install", "--upgrade", *args])


if __name__ == "__main__":
    sys.exit(main())
