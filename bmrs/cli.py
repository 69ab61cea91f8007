"""Command line: ``python -m bmrs <command>``.

  train     train, prune and evaluate one (dataset, network, method, seed) run (cached by config hash)
  compact   physically shrink a finished run's network and report parameters, MACs and latency
  download  fetch a dataset through torchvision (the only command that uses the network)
  show      print the final metrics of a run directory

Errors a user can cause print one line starting with "error:" that says how to fix it, and exit
non-zero (2 for invalid arguments, 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _method(value: str) -> str:
    from bmrs.experiments import valid_methods

    v = value.lower()
    if v in valid_methods():
        return v
    if v.startswith("bmrs_u"):
        try:
            float(v[6:].lstrip("-"))
            return v
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"unknown method {value!r}; valid: {', '.join(valid_methods())} "
                                     "(or bmrs_u<p1>, e.g. bmrs_u6)")


def _parser() -> argparse.ArgumentParser:
    from bmrs.experiments import NETWORKS, dataset_names

    parser = argparse.ArgumentParser(prog="python -m bmrs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train, prune and evaluate one run")
    t.add_argument("--dataset", required=True, choices=dataset_names())
    t.add_argument("--network", required=True, choices=NETWORKS)
    t.add_argument("--method", required=True, type=_method)
    t.add_argument("--seed", type=int, default=1000)
    t.add_argument("--profile", default="paper", help="label recorded with the run (smoke, quick, paper)")
    t.add_argument("--epochs", type=int, help="training epochs (default: the paper's preset)")
    t.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs after the final pruning (default 10)")
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--prune-every", type=int, default=1, help="pruning period P in epochs (0: never during training)")
    t.add_argument("--kl-reduction", choices=("mean", "sum"), default="mean")
    t.add_argument("--noise-lr-scale", type=float, default=1.0,
                   help="learning-rate multiplier for the noise parameters (the quick profile uses 10)")
    t.add_argument("--limit-train", type=int, help="use only this many training(+validation) examples")
    t.add_argument("--limit-test", type=int, help="use only this many test examples")
    t.add_argument("--pretrained", action="store_true", help="start from torchvision's ImageNet weights")
    t.add_argument("--keep-imagenet-head", action="store_true", help="keep the 1000-way head (the authors' choice)")
    t.add_argument("--image-size", type=int, help="input resolution for ResNet/ViT (default 224)")
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    t.add_argument("--results-dir", default="results/runs")
    t.add_argument("--force", action="store_true", help="recompute even if the run has finished")

    c = sub.add_parser("compact", help="physically shrink a finished run and measure it")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--threads", type=int, default=1, help="CPU threads for the latency measurement")
    c.add_argument("--repeats", type=int, default=50)

    d = sub.add_parser("download", help="download a dataset through torchvision")
    d.add_argument("name", choices=dataset_names())
    d.add_argument("--root", type=Path)

    s = sub.add_parser("show", help="print the final metrics of a run directory")
    s.add_argument("run_dir", type=Path)
    return parser


def _train(args: argparse.Namespace) -> int:
    from bmrs.experiments import RunConfig, run, run_dir

    cfg = RunConfig(dataset=args.dataset, network=args.network, method=args.method, seed=args.seed,
                    profile=args.profile, epochs=args.epochs, finetune_epochs=args.finetune_epochs, lr=args.lr,
                    batch_size=args.batch_size, prune_every=args.prune_every, kl_reduction=args.kl_reduction,
                    noise_lr_scale=args.noise_lr_scale,
                    limit_train=args.limit_train, limit_test=args.limit_test, pretrained=args.pretrained,
                    keep_imagenet_head=args.keep_imagenet_head, image_size=args.image_size, device=args.device)
    out = run_dir(cfg, args.results_dir)
    done = (out / "metrics.json").exists() and not args.force
    metrics = run(cfg, results_dir=args.results_dir, force=args.force)
    final = metrics["final"]
    print(f"{'cached' if done else 'finished'}: {out}")
    print(f"test accuracy {final['test_acc']:.2f}%  parameter compression {final['param_compression_pct']:.2f}%  "
          f"structure compression {final['structure_compression_pct']:.2f}%")
    return 0


def _show(args: argparse.Namespace) -> int:
    path = args.run_dir / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; the run has not finished (python -m bmrs train ...)")
    print(json.dumps(json.loads(path.read_text())["final"], indent=2))
    return 0


def _compact(args: argparse.Namespace) -> int:
    from bmrs import compact

    report = compact.compact_run(args.run_dir, threads=args.threads, repeats=args.repeats)
    print(json.dumps(report, indent=2))
    return 0


def _download(args: argparse.Namespace) -> int:
    from bmrs import data

    path = data.download(args.name, root=args.root)
    print(f"downloaded {args.name} to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bmrs.data import DataUnavailableError
    from bmrs.experiments import ResultsCorruptError

    try:
        return {"train": _train, "show": _show, "compact": _compact, "download": _download}[args.command](args)
    except (DataUnavailableError, ResultsCorruptError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last completed epoch", file=sys.stderr)
        return 130
