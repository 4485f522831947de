"""What to audit, defined once for `kdaudit audit` (local) and `kdaudit submit` (the service).

Why one place: an audit asks the same questions wherever it runs (which attacks and students,
how many seeds, what the thief sees, which sweeps), so both commands take the same flags and
turn them into the same fields: those of the API's audit request (service/schemas.py
`AuditCreate`), which are also `AuditConfig`'s (distill/config.py). Flags left out are left out
of the request, so the engine's defaults (or, for `submit`, the teacher's dataset) apply.

Lists are comma-separated everywhere (`--attacks normal_kd,skeptical`), and each item is
converted to its field's type here, because the API checks types strictly (`"0.5"` is not 0.5).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar, get_args

from kdaudit.preprocess_args import add_expected_accuracy_option

T = TypeVar("T")


def comma_list(item: Callable[[str], T] = str, choices: tuple[str, ...] | None = None) -> Callable[[str], list[T]]:
    """An argparse `type`: 'a,b,c' -> [item('a'), item('b'), item('c')], each in `choices` if given."""

    def parse(text: str) -> list[T]:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        unknown = [p for p in parts if choices is not None and p not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown[0]!r} (choose from {', '.join(choices or ())})")
        try:
            return [item(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {getattr(item, '__name__', 'values')}s, "
                                             f"got {text!r}") from None

    return parse


def add_audit_options(parser: argparse.ArgumentParser) -> None:
    """Add the audit flags; `audit_request_fields` reads them back."""
    from kdaudit.distill.config import AttackName

    attacks = get_args(AttackName)
    g = parser.add_argument_group("the audit: attacks, students, training, the teacher's sanity check")
    g.add_argument("--dataset", help="the thief's data: digits | mnist | fashion-mnist | cifar10 | cifar100 | "
                   "cifar100-coarse | folder (audit: --dataset-path; submit: --dataset-name, the server's), and for a "
                   "local audit npz (default: digits; submit: the teacher's own)")
    g.add_argument("--image-size", type=int, help="for --dataset folder: resize images to this square size (default: inferred)")
    g.add_argument("--attacks", type=comma_list(choices=attacks), metavar="ATTACK,...",
                   help=f"comma-separated (default normal_kd,skeptical): {', '.join(attacks)} "
                   "(dfme: black-box, forward-difference gradients)")
    g.add_argument("--students", type=comma_list(), metavar="ARCH,...", help="student architectures, comma-separated (default cnn-4-8-8-16)")
    g.add_argument("--seeds", type=int, help="seeds per student (default 3; verdicts need intervals, so >= 2)")
    g.add_argument("--fraction", type=float, help="share of the training set the thief has (default 1)")
    g.add_argument("--epochs", type=int, help="student epochs (default: the dataset's schedule, 40 on digits)")
    g.add_argument("--batch-size", type=int, help="student batch size (default: the dataset's schedule)")
    g.add_argument("--lr", type=float, help="student learning rate (default: the dataset's schedule)")
    g.add_argument("--temperature", type=float, help="KD temperature tau (default 4; 20 on CIFAR-100)")
    g.add_argument("--alpha", type=float, help="KD soft-loss weight (default 0.9)")
    g.add_argument("--ac-stage", type=int, help="stage (1-3) whose exit takes the teacher loss in the skeptical student")
    g.add_argument("--df-iterations", type=int, help="data-free attacks: generator/student rounds (default: dataset's)")
    g.add_argument("--df-batch-size", type=int, help="data-free attacks: generated images per step (default: dataset's)")
    g.add_argument("--dfad-teacher-gradient", action="store_true",
                   help="DFAD: let the generator backpropagate through the teacher (official DFAD; grey-box, not ONNX)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where students train (default auto)")
    g.add_argument("--label-smoothing", type=float, metavar="EPS",
                   help="smoothing of the label-smoothing baseline student (default 0.1; 0 turns the baseline off)")
    g.add_argument("--force", action="store_true", help="audit even if the teacher sanity check fails (the report says so)")
    add_expected_accuracy_option(g)

    g = parser.add_argument_group("what the thief sees (threat model)")
    g.add_argument("--teacher-output", help="the teacher's output policy: logits (default), probs, probs@T, topK, "
                   "topK-renorm, roundN, label")
    g.add_argument("--query-budget", type=int, help="cap on billed teacher queries (images) per run, every attack "
                   "(data-free attacks count every image they send)")
    g.add_argument("--billing", choices=["distinct", "every"], help="distinct (default): a repeated image is billed once; every: all sent")

    g = parser.add_argument_group("sweeps and panels (extra settings audited beside the base one)")
    g.add_argument("--sweep-outputs", type=comma_list(), metavar="POLICY,...", help="also audit these output policies, e.g. top5,top1,label")
    g.add_argument("--sweep-fractions", type=comma_list(float), metavar="FRACTION,...", help="also audit these shares of the training data, e.g. 0.5,0.1,0.01")
    g.add_argument("--sweep-ac-stages", type=comma_list(int), metavar="STAGE,...", help="also audit the skeptical student with the teacher loss at these stages (1-3)")
    g.add_argument("--sweep-temperatures", type=comma_list(float), metavar="TAU,...", help="also audit KD at these temperatures, e.g. 1,20")
    g.add_argument("--sweep-grid", action="store_true", help="sweep every combination of the listed values (default: one knob at a time)")
    g.add_argument("--panel", choices=["standard"], help="add the standard attack panel (KD at tau 1/4/20, two AC depths, DFAD, label-only)")


def _given(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def audit_request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as audit-request fields (AuditCreate = AuditConfig names); unset flags and empty sections left out."""
    sweep = _given(outputs=args.sweep_outputs, fractions=args.sweep_fractions, ac_stages=args.sweep_ac_stages,
                   temperatures=args.sweep_temperatures, mode="grid" if args.sweep_grid else None)
    sections = {
        "schedule": _given(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr),
        "kd": _given(temperature=args.temperature, alpha=args.alpha),
        "skeptical": _given(ac_stage=args.ac_stage),
        "datafree": _given(iterations=args.df_iterations, batch_size=args.df_batch_size,
                           dfad_teacher_gradient=args.dfad_teacher_gradient or None),
        "threat": _given(output=args.teacher_output, query_budget=args.query_budget, billing=args.billing),
        "sweep": sweep,
    }
    top = _given(dataset=args.dataset, attacks=args.attacks, students=args.students, seeds=args.seeds,
                 fraction=args.fraction, label_smoothing=args.label_smoothing, device=args.device, force=args.force or None,
                 expected_accuracy=args.expected_accuracy, panel=args.panel, image_size=args.image_size)
    return {**top, **{name: section for name, section in sections.items() if section}}
