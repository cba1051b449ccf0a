"""Signing and verifying a model directory ÷ one SHA-256 pass over the same bytes.

Usage: ``python benchmarks/signing.py [--size-mb 100] [--repeats 5] [--clock wall|cpu] [--no-results]``

What is measured (the model directory is built once, in a temporary directory, and stays in the
page cache, so every variant reads it from memory alike):

* the directory: ``weights.safetensors`` (a safetensors header and random float32 bytes),
  ``model.onnx``, ``bom.json`` (30 KB) and ``MODEL_CARD.md`` (3 KB), the files of a published
  fedguard model. The ONNX export holds the same float32 parameters as its initializers, so in a
  published model it is as large as the weights: ``--onnx-share 0.5`` (the default since
  2026-12-05) splits the bytes evenly; ``--onnx-share 0.04`` is the layout measured before
  (a small ONNX file beside the weights);
* baseline: one SHA-256 pass over every file with ``hashlib`` (1 MiB reads, one thread), measured
  in the same process just before each signing or verification, so load from other jobs on
  shared cores falls on both; ratios are taken per pair, then the median;
* ours: ``lifecycle.signing.sign_model`` and ``verify_model`` (OpenSSF Model Signing through
  ``model-signing``, an ECDSA P-256 key), in a process that has already imported
  ``model_signing`` (as the coordinator, the server and every later call see it);
* the first call in a fresh process (what ``fedguard models verify`` or a publication pays
  once): each repeat starts one process that signs and one that verifies, and one that only
  imports ``model_signing``;
* for reference, the same signer configured with BLAKE3 digests through ``model_signing``'s own
  API (not what fedguard signs with: the upstream ``model_signing verify key`` cannot check it);
* ``--clock cpu`` times the process's CPU time (every thread) instead of wall time: other jobs on
  shared cores stretch wall times unevenly (model_signing hashes files on a thread pool, the
  baseline on one thread), and CPU time much less.

It prints every median and ratio and appends one row to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from results import append_row, machine  # noqa: E402  # benchmarks/results.py (scripts run from benchmarks/)

from lifecycle.signing import SigningKey, ensure_signing_key, sign_model, verify_model  # noqa: E402

WARM = 3
"""Signings and verifications per child process after its first call."""


def build_model(model_dir: Path, size_mb: int, seed: int = 0, onnx_share: float = 0.5) -> dict[str, int]:
    """A published model's files, ``size_mb`` MB in all, of random (incompressible) content."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = size_mb * 1_000_000
    bom = json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "pad": "x" * 29_900}).encode()
    card = ("# Model card\n" + "A line of the model card.\n" * 115).encode()
    onnx = rng.bytes(int(total * onnx_share) - len(bom) - len(card))
    weights_bytes = total - len(bom) - len(card) - len(onnx)
    header = json.dumps({"w": {"dtype": "F32", "shape": [weights_bytes // 4], "data_offsets": [0, 0]}}).encode()
    payload = rng.bytes(weights_bytes - 8 - len(header))
    model_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "weights.safetensors": struct.pack("<Q", len(header)) + header + payload,
        "model.onnx": onnx, "bom.json": bom, "MODEL_CARD.md": card,
    }
    for name, data in files.items():
        (model_dir / name).write_bytes(data)
    return {name: len(data) for name, data in files.items()}


def sha256_pass(model_dir: Path) -> None:
    """The baseline: one SHA-256 over every file, 1 MiB reads, one thread."""
    for path in sorted(model_dir.iterdir()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.digest()


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""Wall time, and the process's CPU time (all threads): the latter moves little when other jobs share the cores."""
CLOCK = "wall"


def _seconds(call: Callable[[], object]) -> float:
    clock = CLOCKS[CLOCK]
    start = clock()
    call()
    return clock() - start


def _blake3_sign(model_dir: Path, signature: Path, key: SigningKey) -> None:
    from model_signing import hashing, signing

    config = hashing.Config().use_file_serialization(hashing_algorithm="blake3")  # type: ignore[no-untyped-call]
    signing.Config().use_elliptic_key_signer(  # type: ignore[no-untyped-call]
        private_key=key.private_key
    ).set_hashing_config(config).sign(model_dir, signature)


def child(mode: str, model_dir: Path, keys: Path, out: Path) -> dict[str, list[float]]:
    """One fresh process: its first call, then WARM calls, each paired with a SHA-256 pass before it."""
    key = ensure_signing_key(keys)
    signature = out / f"{mode}-{os.getpid()}.sig"
    sha256_pass(model_dir)  # the same page-cache state as the parent left it
    if mode == "import":
        return {"import": [_seconds(lambda: __import__("model_signing"))]}
    if mode == "verify":
        hashed = _seconds(lambda: sha256_pass(model_dir))
        first = _seconds(lambda: verify_model(model_dir, out / "model.sig", key.public_key))
        return {"hash": [hashed], "first_verify": [first]}
    times: dict[str, list[float]] = {k: [] for k in ("hash", "first_sign", "sign", "verify", "b3_sign", "b3_verify")}
    times["hash"].append(_seconds(lambda: sha256_pass(model_dir)))
    times["first_sign"].append(_seconds(lambda: sign_model(model_dir, signature, key)))
    b3 = out / f"b3-{os.getpid()}.sig"
    for _ in range(WARM):
        for name, call in (
            ("sign", lambda: sign_model(model_dir, signature, key)),
            ("verify", lambda: verify_model(model_dir, signature, key.public_key)),
            ("b3_sign", lambda: _blake3_sign(model_dir, b3, key)),
            ("b3_verify", lambda: verify_model(model_dir, b3, key.public_key)),
        ):
            times["hash"].append(_seconds(lambda: sha256_pass(model_dir)))
            times[name].append(_seconds(call))
    return times


def _run_child(mode: str, model_dir: Path, keys: Path, out: Path, clock: str) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(model_dir), str(keys), str(out), clock],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child '{mode}' failed:\n{done.stderr}")
    result: dict[str, list[float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _ratios(times: dict[str, list[float]], op: str) -> list[float]:
    """Each call ÷ the SHA-256 pass measured just before it (same process, same load)."""
    hashes = times["hash"]
    if op == "first_verify" or op == "first_sign":
        return [times[op][0] / hashes[0]]
    order = ("sign", "verify", "b3_sign", "b3_verify")
    step = order.index(op)
    return [t / hashes[1 + i * len(order) + step] for i, t in enumerate(times[op])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100, help="size of the model directory")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per variant")
    parser.add_argument("--onnx-share", type=float, default=0.5,
                        help="the ONNX export's share of the bytes (0.5: as large as the weights, as published)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (robust to other jobs on shared cores)")
    parser.add_argument("--no-results", action="store_true", help="do not append to benchmarks/RESULTS.md")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "DIR", "KEYS", "OUT", "CLOCK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        global CLOCK
        mode, model_dir, keys, out, CLOCK = args.child
        print(json.dumps(child(mode, Path(model_dir), Path(keys), Path(out))))
        return
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fedguard-signing-bench-") as tmp:
        root = Path(tmp)
        model_dir, keys = root / "model", root / "keys"
        files = build_model(model_dir, args.size_mb, onnx_share=args.onnx_share)
        sign_model(model_dir, root / "model.sig", ensure_signing_key(keys))  # what the verify children check
        runs = []
        for _ in range(args.repeats):  # interleaved: a signing process, a verifying one, an importing one
            runs.append(tuple(_run_child(mode, model_dir, keys, root, args.clock)
                              for mode in ("sign", "verify", "import")))
    signs, verifies, imports = zip(*runs, strict=True)

    def med(op: str, source: tuple[dict[str, list[float]], ...]) -> tuple[float, float]:
        seconds = statistics.median(t for run in source for t in run[op])
        return seconds, statistics.median(r for run in source for r in _ratios(run, op))

    hash_s = statistics.median(t for run in signs for t in run["hash"])
    sign_s, sign_x = med("sign", signs)
    verify_s, verify_x = med("verify", signs)
    both_x = statistics.median(
        s / run["hash"][1 + 4 * i] + v / run["hash"][2 + 4 * i]
        for run in signs for i, (s, v) in enumerate(zip(run["sign"], run["verify"], strict=True))
    )
    first_sign_s, first_sign_x = med("first_sign", signs)
    first_verify_s, first_verify_x = med("first_verify", verifies)
    import_s = statistics.median(run["import"][0] for run in imports)
    b3_sign_s, b3_sign_x = med("b3_sign", signs)
    b3_verify_s, b3_verify_x = med("b3_verify", signs)
    end_load = os.getloadavg()[0]
    sizes = ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in files.items())
    print(f"{args.size_mb} MB model directory ({sizes}); {args.repeats} repeats, medians, {args.clock} clock; "
          f"load average {load:.1f} at start, {end_load:.1f} at end")
    print(f"  SHA-256 pass (hashlib, baseline)  {hash_s:6.3f} s  1.00x")
    print(f"  sign   (fedguard)                 {sign_s:6.3f} s  {sign_x:.2f}x")
    print(f"  verify (fedguard)                 {verify_s:6.3f} s  {verify_x:.2f}x")
    print(f"  sign + verify                     {sign_s + verify_s:6.3f} s  {both_x:.2f}x  (goal 1.3x)")
    print(f"  first call in a fresh process: sign {first_sign_s:.3f} s ({first_sign_x:.1f}x), "
          f"verify {first_verify_s:.3f} s ({first_verify_x:.1f}x); import model_signing alone {import_s:.3f} s")
    print(f"  BLAKE3 digests (reference, not CLI-verifiable): sign {b3_sign_s:.3f} s ({b3_sign_x:.2f}x), "
          f"verify {b3_verify_s:.3f} s ({b3_verify_x:.2f}x), sum {b3_sign_x + b3_verify_x:.2f}x")
    if args.no_results:
        return
    cores = os.cpu_count() or 1
    shared = (f"; load average {load:.1f}–{end_load:.1f} on {cores} cores: other jobs shared the cores"
              if max(load, end_load) > cores / 2 else "")
    append_row(
        f"| {time.strftime('%Y-%m-%d')} | signing | sign + verify of a {args.size_mb} MB model directory "
        f"(4 files: {sizes}), model_signing already imported, median of {args.repeats}×{WARM}, {args.clock} clock "
        f"| {sign_s + verify_s:.3f} s | {hash_s:.3f} s (one SHA-256 pass) | {both_x:.2f}x "
        f"| sign {sign_x:.2f}x, verify {verify_x:.2f}x of the pass measured just before each; first call in a "
        f"fresh process: sign {first_sign_s:.2f} s ({first_sign_x:.1f}x), verify {first_verify_s:.2f} s "
        f"({first_verify_x:.1f}x), of which importing model_signing {import_s:.2f} s; BLAKE3 digests "
        f"(not checkable by the upstream CLI) {b3_sign_x:.2f}x + {b3_verify_x:.2f}x{shared} | {machine()} |"
    )


if __name__ == "__main__":
    main()
