"""Offline stand-in for the get-pip.py that ansible-test downloads to bootstrap pip.

ansible-test creates each sanity test's virtualenv without pip, then fetches a get-pip.py
from a host this machine cannot reach; it uses a copy in ~/.ansible/test/cache when one
exists, which `make lint` puts there from this file. It installs the pip that ships with
Python (ensurepip, no network), then the pip version ansible-test asked for from the
configured package index, with the same arguments get-pip.py takes.
"""

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

ensurepip.bootstrap(upgrade=True)
# ensurepip hides the pip configuration (index, certificates) from the pip it runs: undo that.
os.environ.pop("PIP_CONFIG_FILE", None)
requested = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade", *requested]))
