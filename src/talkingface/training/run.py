"""A training run's folder: config.json, train.log, metrics.csv and the loss plots."""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path

from ..config import TrainConfig, save_config

log = logging.getLogger(__name__)


class Run:
    """Run folder, logging, metrics CSV, plots, checkpoints; rank 0 writes, other ranks stay quiet."""

    _handler: logging.Handler | None = None  # the train.log handler of the latest run in this process

    def __init__(self, cfg: TrainConfig, run_dir: Path | None, rank: int):
        self.rank = rank
        Run.close()  # an earlier run in this process must not keep logging into its own train.log
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path("runs") / f"{stamp}-{cfg.name}"
        self.dir = Path(run_dir)
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "samples").mkdir(exist_ok=True)
            save_config(cfg, self.dir / "config.json")
            fh = logging.FileHandler(self.dir / "train.log")
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logging.getLogger("talkingface").addHandler(fh)
            Run._handler = fh
        self.csv = self.dir / "metrics.csv"

    @staticmethod
    def close() -> None:
        if Run._handler is not None:
            logging.getLogger("talkingface").removeHandler(Run._handler)
            Run._handler.close()
            Run._handler = None

    def truncate_metrics(self, step: int) -> None:
        """After a resume, forget rows logged after the checkpoint (they will be redone)."""
        if self.rank or not self.csv.exists():
            return
        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["step"]) <= step]
        self._write_rows(keep)

    def _write_rows(self, rows: list[dict]) -> None:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k != "split", k))
        tmp = self.csv.with_name(self.csv.name + ".tmp")
        with open(tmp, "w", newline="") as f:  # atomic: a run killed mid-write keeps the old file
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv)

    def log_metrics(self, step: int, split: str, metrics: dict) -> None:
        if self.rank:
            return
        rows = []
        if self.csv.exists():
            with open(self.csv) as f:
                rows = list(csv.DictReader(f))
        rows.append({"step": step, "split": split, **{k: f"{v:.6g}" for k, v in metrics.items()}})
        self._write_rows(rows)
        log.info("step %d %s %s", step, split, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    def plot(self) -> None:
        if self.rank or not self.csv.exists():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        keys = sorted({k for r in rows for k in r if k not in ("step", "split") and r.get(k)})
        if not keys:
            return
        cols = 4
        nrow = (len(keys) + cols - 1) // cols
        fig, axes = plt.subplots(nrow, cols, figsize=(4 * cols, 2.6 * nrow), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            for split in ("train", "val"):
                pts = [(int(r["step"]), float(r[k])) for r in rows if r["split"] == split and r.get(k)]
                if pts:
                    ax.plot(*zip(*pts), label=split, marker="." if split == "val" else None)
            ax.set_title(k, fontsize=9)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(self.dir / "losses.png", dpi=80)
        plt.close(fig)
