"""The server under load (issue 25, deliverable 3) at full scale: 256 greedy requests streamed from 64
concurrent clients (the official ``openai`` client) to ``genmodels serve`` over SmolLM2-135M-Instruct.
Checks that every response is complete and equal to the prompt's greedy completion generated alone,
that none is lost, and reports the server's RSS over the run (sampled after every finished request).

    .venv/bin/python benchmarks/serve_load.py [--requests 256 --clients 64 --max-tokens 8 --max-batch 16]

CI runs the same check scaled down on a tiny model (tests/serve/test_load.py)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import genmodels  # noqa: E402
from genmodels.serve import ServerThread, Service, build_app  # noqa: E402
from tests.helpers.serve_load import alone, prompts_for, run_load  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1, help="send the requests this many times (RSS per round)")
    p.add_argument("--no-alone", action="store_true", help="skip the one-at-a-time reference (no equality check)")
    args = p.parse_args()
    from tests.parity.transformers.make_gguf_reference import smollm2_file
    model = genmodels.load(smollm2_file())
    prompts = prompts_for(args.requests)
    t0 = time.perf_counter()
    expected = [None] * len(prompts) if args.no_alone else alone(model, prompts, args.max_tokens)
    t_alone = time.perf_counter() - t0
    print(f"alone: {t_alone:.1f} s", flush=True)
    with ServerThread(build_app(Service(model, "smollm2", max_batch=args.max_batch,
                                        max_queue=args.requests))) as server:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            texts, rss = run_load(server.url, "smollm2", prompts, concurrency=args.clients,
                                  max_tokens=args.max_tokens)
            t_served = time.perf_counter() - t0
            print(f"round {r + 1}: {t_served:.1f} s, RSS MiB max {max(rss):.0f}, end {rss[-1]:.0f}", flush=True)
    lost = [i for i, t in enumerate(texts) if t is None]
    differ = [i for i, (t, e) in enumerate(zip(texts, expected)) if t is not None and e is not None and t != e]
    half = len(rss) // 2
    print(f"{args.requests} requests, {args.clients} concurrent streaming clients, max_tokens {args.max_tokens}, "
          f"--max-batch {args.max_batch}")
    print(f"lost: {len(lost)}; differ from alone (greedy): {len(differ)} {differ[:10]}")
    print(f"time: one at a time (generate) {t_alone:.1f} s; served {t_served:.1f} s")
    print(f"RSS MiB: start {rss[0]:.0f}, max of the first half {max(rss[:half]):.0f}, "
          f"max of the second half {max(rss[half:]):.0f}, end {rss[-1]:.0f}")
    for i in differ[:3]:
        print(f"  [{i}] {prompts[i]!r}\n    alone:  {expected[i]!r}\n    served: {texts[i]!r}")
    return 1 if lost or differ else 0


if __name__ == "__main__":
    sys.exit(main())
