"""`tnn convert SRC DST`: thin argparse over `convert_checkpoint`; prints the report table to stdout.

Exit codes: 0 written; 1 unreadable input or DST exists without --force; 2 the model cannot be converted
(refused); 3 the conversion failed verification (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from typing import get_args

import torch

from tnn.convert.convert import ConversionRefused, ConversionReport, VerificationFailed, convert_checkpoint
from tnn.model.config import SsmMethod
from tnn.model.conversion import DEFAULT_METHOD, ReducedOptions

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeprecatedName(argparse.Action):
    """An old flag name kept working: stores into the new flag's destination and says the new name on stderr."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option: str | None = None
    ) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"tnn convert: {option} is deprecated, use {new} (the same number)", file=sys.stderr)  # noqa: T201
        setattr(namespace, self.dest, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="a model directory or an original fairseq checkpoint (.pt)")
    parser.add_argument("dst", metavar="DST", help="the model directory to write (atomically)")
    parser.add_argument(
        "--method",
        choices=get_args(SsmMethod),
        default=DEFAULT_METHOD,
        help="'reduced': per channel an exact FIR head plus a few damped modes fitted to the kernel in and past n "
        "(a state 10-40x smaller); 'etsc': the published algorithm (a spurious tap at lag n); 'etsc-inclusive': "
        "keeps the j=0 mode so the lag-n tap is the true coefficient; 'etsc-tail': exact to lag n and, past n, a "
        f"decayed constant tail close to the TNN with the periodic copy damped (default {DEFAULT_METHOD})",
    )
    defaults = ReducedOptions()
    parser.add_argument(
        "--tolerance",
        type=float,
        default=defaults.tolerance,
        help="reduced: max kernel error per channel, relative to the channel's largest coefficient, over the fitted "
        f"lags (default {defaults.tolerance:g})",
    )
    parser.add_argument(
        "--max-order",
        type=int,
        default=defaults.max_order,
        help="reduced: model order cap per channel, in poles (a complex pair counts 2 and is stored as one mode); a "
        f"channel that misses the tolerance keeps its best fit within the cap (default {defaults.max_order})",
    )
    parser.add_argument("--max-modes", type=int, dest="max_order", action=DeprecatedName, help=argparse.SUPPRESS)
    parser.add_argument(
        "--exact-fallback",
        action="store_true",
        help="reduced: a channel that misses the tolerance keeps its exact ETSC modes instead (exact to lag n, but "
        "its whole layer widens to n/2 + 1 slots)",
    )
    parser.add_argument(
        "--fir-length",
        type=int,
        default=defaults.fir_length,
        help=f"reduced: lags 0..h-1 kept exactly as FIR taps (default {defaults.fir_length})",
    )
    parser.add_argument(
        "--fit-multiple",
        type=int,
        default=defaults.fit_multiple,
        help=f"reduced: fit lags 0 .. multiple x n - 1 (default {defaults.fit_multiple})",
    )
    parser.add_argument(
        "--length", type=int, default=None, help="conversion length n (default: the training length, else 512)"
    )
    parser.add_argument("--full-state", action="store_true", help="keep all modes (no conjugate halving)")
    parser.add_argument("--tokenizer", default=None, metavar="DIR", help="Hugging Face tokenizer directory to attach")
    parser.add_argument(
        "--fairseq-dict",
        default=None,
        metavar="FILE",
        help="the dict.txt a fairseq checkpoint was trained with; --tokenizer is then its GPT-2 BPE, and the "
        "tokenizer written maps text to the checkpoint's fairseq ids",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the stored weights")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    parser.add_argument(
        "--eval-text",
        default=None,
        metavar="FILE",
        help="a UTF-8 text to measure fidelity on (recurrent vs parallel, teacher-forced; default: SRC's "
        "held_out.txt, else random token ids)",
    )
    parser.add_argument(
        "--no-past-n",
        action="store_true",
        help="skip the past-n comparison (every method's kernel past n, the converted method's logits past n)",
    )
    parser.add_argument(
        "--compare-methods",
        action="store_true",
        help="also run every method's recurrent logits on random ids to 2n and 4n (one conversion and one pass "
        "per method: tens of seconds on the shipped model)",
    )


def format_report(report: ConversionReport) -> str:
    """The short plain-text table printed after a conversion."""
    shape = f"modes per layer {list(report.modes)}" if isinstance(report.modes, tuple) else f"{report.modes} modes"
    head = ""
    if report.reduced is not None:
        missed = sum(layer["missed_channels"] for layer in report.reduced["layers"])
        head = (
            f", FIR head {report.reduced['fir_length']}, tolerance {report.reduced['tolerance']:g} "
            f"({missed} channel(s) over it kept their best fit)"
        )
    lines = [
        f"{report.source} -> {report.destination}",
        f"method {report.method}, n = {report.length}, {shape}/channel{head}"
        f"{' (full state)' if report.full_state else ''}, "
        f"state {report.state_bytes_per_sequence / 2**10:.1f} KiB/sequence (float32)",
        "",
        f"{'layer':>5}  {'modes':>5}  {'fallback':>8}  {'kernel err (fft)':>16}  {'kernel err (modes)':>18}"
        f"  {'lag-n tap err':>13}  {'past-n err':>10}  {'tail damping':>12}",
    ]
    for k in report.kernel_checks:
        lines.append(
            f"{k.layer:>5}  {k.modes:>5}  {k.fallback_channels:>8}  {k.rel_error:>16.2e}  {k.rel_error_modes:>18.2e}"
            f"  {k.lag_n_rel_error:>13.2e}  {k.past_n_rel_error:>10.2e}  {k.tail_damping_median:>12.3g}"
        )
    c = report.logits_check
    lines += [
        "",
        f"logits, recurrent vs parallel ({c.probe_length} tokens, prefill {c.split} + step): "
        f"float64 {c.float64_rel_error:.2e}, float32 {c.float32_rel_error:.2e}",
    ]
    f = report.fidelity
    bits = (
        f", bits/byte {f.bits_per_byte_parallel:.4f} parallel vs {f.bits_per_byte_recurrent:.4f} recurrent "
        f"({f.bits_per_byte_diff:+.5f})"
        if f.bytes
        else ""
    )
    lines += [
        f"fidelity on {f.source} ({f.tokens} tokens, float64, teacher-forced): top-1 agreement "
        f"{100 * f.top1_agreement:.2f}%, max |log-prob diff| {f.max_abs_logprob_diff:.3f}{bits}",
    ]
    if report.past_n_kernels:
        lines += [
            "",
            f"past n, kernel: {'method':<15} {'modes per layer':<20} {'lag-n err':>9}  {'past-n err (to 4n)':>18}",
        ]
        for k in report.past_n_kernels:
            lines.append(
                f"                {k.method:<15} {str(k.modes):<20} {k.lag_n_rel_error:>9.2e}  "
                f"{k.past_n_rel_error:>18.2e}"
            )
    if report.past_n:
        lines += [
            "",
            f"past n, logits: {'method':<15} {'tokens':>6}  {'max rel err':>11}  {'rms rel err':>11}  {'top-1 agree':>11}"
            f"  {'nll parallel':>12}  {'nll recurrent':>13}  probe",
        ]
        for r in report.past_n:
            lines.append(
                f"                {r.method:<15} {r.length:>6}  {r.max_rel_error:>11.2e}  {r.rms_rel_error:>11.2e}"
                f"  {r.top1_agreement:>11.3f}  {r.nll_parallel:>12.4f}  {r.nll_recurrent:>13.4f}  {r.probe}"
            )
    lines += ["", "timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in report.timings_s.items())]
    if report.fairseq_dict:
        lines += [f"tokenizer: {report.tokenizer} remapped to the fairseq ids of {report.fairseq_dict}"]
    lines += [f"WARNING: {warning}" for warning in report.warnings]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        report = convert_checkpoint(
            src=args.src,
            dst=args.dst,
            method=args.method,
            length=args.length,
            full_state=args.full_state,
            tokenizer=args.tokenizer,
            fairseq_dict=args.fairseq_dict,
            force=args.force,
            dtype=DTYPES[args.dtype],
            compare_past_n=not args.no_past_n,
            compare_methods=args.compare_methods,
            eval_text=args.eval_text,
            progress=True,
            reduced=ReducedOptions(
                tolerance=args.tolerance,
                max_order=args.max_order,
                fir_length=args.fir_length,
                fit_multiple=args.fit_multiple,
                exact_fallback=args.exact_fallback,
            ),
        )
    except ConversionRefused as exc:
        print(f"tnn convert: refused: {exc}", file=sys.stderr)  # noqa: T201 (CLI output)
        return 2
    except VerificationFailed as exc:
        print(f"tnn convert: {exc}", file=sys.stderr)  # noqa: T201 (CLI output)
        return 3
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"tnn convert: error: {exc}", file=sys.stderr)  # noqa: T201 (CLI output)
        return 1
    print(format_report(report))  # noqa: T201 (CLI output)
    return 0
