"""What a language-model run costs against what it does not ask to compute (issue 25).

Three parts, each in fresh processes where memory is measured:

- ``corpus``: time to the first step (and to the result) of ``sj.estimate_llc`` on a token
  file streamed from the host, against the file's size (10M to 600M tokens), with the
  bounded ``L_n(w*)`` estimate and with the exact full-data pass.
- ``checkpoints``: peak host anonymous memory of ``sj.estimate_llc_checkpoints`` over a
  directory of K Hugging Face GPT-NeoX checkpoints (lazy checkpoint sets), against K.
- ``restricted``: restricted chains (only the selected coordinates move) against the mask
  path on a GPT-NeoX with every head and MLP as a component: XLA memory analysis per chain,
  FLOPs per chain-step (cost analysis) and time.

    python benchmarks/bench_lm_scale.py [--part corpus|checkpoints|restricted|all] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys


def corpus(quick: bool) -> dict:
    """Time to the first step and to the result against corpus size."""
    raise NotImplementedError("filled by the corpus-size work of issue 25")


def checkpoints(quick: bool) -> dict:
    """Peak host anonymous memory against the number of checkpoints."""
    raise NotImplementedError("filled by the lazy-checkpoint work of issue 25")


def restricted(quick: bool) -> dict:
    """Restricted chains against mask chains: memory, FLOPs and time."""
    raise NotImplementedError("filled by the restricted-chain work of issue 25")


PARTS = {"corpus": corpus, "checkpoints": checkpoints, "restricted": restricted}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    names = list(PARTS) if args.part == "all" else [args.part]
    figures = {name: PARTS[name](args.quick) for name in names}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
