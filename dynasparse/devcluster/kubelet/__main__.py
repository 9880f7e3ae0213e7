"""`python -m dynasparse.devcluster.kubelet --dir DIR`: run the process kubelet of the dev cluster in DIR.

Started in the background by `cluster.up()`; stops its pods and exits on SIGTERM (`cluster.down()`).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from dynasparse.devcluster.config import ClusterConfig
from dynasparse.devcluster.kubelet.agent import Kubelet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True, help="the dev cluster's state directory")
    args = parser.parse_args()
    kubelet = Kubelet(ClusterConfig.load(Path(args.dir)))
    signal.signal(signal.SIGTERM, lambda *_: (kubelet.stopping.set(), kubelet.wake.set()))
    signal.signal(signal.SIGINT, lambda *_: (kubelet.stopping.set(), kubelet.wake.set()))
    kubelet.run()


if __name__ == "__main__":
    main()
