"""`kdaudit defend`: which protection should I deploy, and what does it cost me? (issue 19)

Builds the defence x attack matrix (distill/defences/) for the owner's teacher, prints it with
the Pareto front and one recommendation, and writes it as JSON (`kdaudit.defences/v1`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdaudit.audit_options import comma_list
from kdaudit.preprocess_args import add_preprocess_args, contract_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add `defend`."""
    from kdaudit.distill.defences.registry import DEFAULT_DEFENCES, help_text

    p = sub.add_parser(
        "defend", help="compare defences (nasty teacher, output policies, combinations): attack matrix and utility cost",
        description="Attack the owner's teacher under each defence and measure what each costs honest users. "
        "TEACHER is the owner's normal model; nasty@OMEGA defences train a nasty teacher from it with `protect`'s "
        "recipe on the same dataset's training split (late-window checkpoint on the validation split) and save it "
        "next to --out. Defences: " + help_text() + ".",
    )
    p.add_argument("teacher", type=Path, help="the owner's teacher: .safetensors, .onnx or a PyTorch state_dict")
    p.add_argument("--arch", required=True, help="the teacher's architecture, e.g. cnn-16-32-32-64 (nasty teachers use it too)")
    p.add_argument("--dataset", default="digits", help="digits | mnist | fashion-mnist | cifar10 | cifar100 | npz | folder")
    p.add_argument("--dataset-path", help="for --dataset npz / folder")
    p.add_argument("--defences", type=comma_list(), default=list(DEFAULT_DEFENCES),
                   help=f"comma-separated (default {','.join(DEFAULT_DEFENCES)}); bare `nasty` = the dataset's protect omega")
    p.add_argument("--students", type=comma_list(), default=["cnn-4-8-8-16"], help="student architectures, comma-separated")
    p.add_argument("--seeds", type=int, default=3, help="seeds per attack (default 3; intervals need >= 2)")
    p.add_argument("--epochs", type=int, help="student epochs (default: the dataset's, 40 on digits)")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the training set the thief holds (default 1)")
    p.add_argument("--nasty-epochs", type=int, help="nasty teachers' epochs (default: protect's recipe, 150 on digits)")
    p.add_argument("--datafree", action="store_true",
                   help="add the data-free DFAD attack where the defence serves full scores (slow on CPU; off by default)")
    p.add_argument("--query-budget", type=int, help="cap on billed teacher queries (images) per run, every attack "
                   "under every defence (as `audit --query-budget`)")
    p.add_argument("--max-utility-loss", type=float, default=1.0,
                   help="recommendation rule: the most top-1 points honest users may lose (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, default=Path("matrix.json"), help="the matrix as JSON (default matrix.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--force", action="store_true", help="audit the owner's teacher even when its sanity check fails")
    add_preprocess_args(p)  # the owner's input contract (a teacher trained on raw pixels, ...) and expected accuracy
    p.set_defaults(func=cmd_defend)


def cmd_defend(args: argparse.Namespace) -> int:
    from kdaudit.distill.data import dataset_spec
    from kdaudit.distill.defences.engine import DefendConfig, build_matrix
    from kdaudit.distill.defences.render import summary, table
    from kdaudit.models.checkpoints import load_teacher, sha256_file

    config = DefendConfig(teacher_arch=args.arch, dataset=args.dataset, dataset_path=args.dataset_path,
                          defences=args.defences, students=args.students, seeds=args.seeds, epochs=args.epochs,
                          fraction=args.fraction, nasty_epochs=args.nasty_epochs, datafree=args.datafree,
                          query_budget=args.query_budget, max_utility_loss=args.max_utility_loss, device=args.device,
                          teacher_input=contract_from_args(args), expected_accuracy=args.expected_accuracy,
                          force=args.force)
    spec = dataset_spec(config.dataset, config.dataset_path)
    teacher = load_teacher(args.teacher, config.teacher_arch, spec.num_classes, spec.in_channels, image_size=spec.image_size)
    matrix = build_matrix(config, teacher, sha256_file(args.teacher), save_dir=args.out.parent,
                          progress=None if args.quiet else _progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(matrix.to_json())
    print(table(matrix))
    print(summary(matrix))
    print(f"matrix written to {args.out} ({matrix.environment['wall_seconds']:.0f} s)")
    return 0


def _progress(stage: str, event) -> None:  # noqa: ANN001 - ProgressEvent or EpochReport
    """One line per finished run, and every 25th nasty-teacher epoch: enough to see a long run move."""
    if getattr(event, "kind", None) == "run_finished" and event.record is not None:
        print(f"  [{stage}] {event.run_key}: test {event.record.test_accuracy:.2f}% "
              f"({event.run_index + 1}/{event.total_runs})", file=sys.stderr)
    elif hasattr(event, "val_accuracy") and not hasattr(event, "kind") and event.epoch % 25 == 0:
        print(f"  [{stage}] epoch {event.epoch}/{event.epochs}: val {event.val_accuracy:.1f}%", file=sys.stderr)
