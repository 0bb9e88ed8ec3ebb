"""``mobilenet-serve``: serve, manage weights, and classify from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLES = {
    "serve": """examples:
  mobilenet-serve serve                          # 127.0.0.1:8000, every variant present
  mobilenet-serve serve --host 0.0.0.0 --port 9000 --workers 2
  MOBILENET_VARIANTS=v3-small-1.0-224,v2-1.0-224 mobilenet-serve serve""",
    "weights": """examples:
  mobilenet-serve weights list
  mobilenet-serve weights fetch                  # default set (what the mirror holds, or all)
  mobilenet-serve weights fetch v3-small-1.0-224 v1-0.25-128
  mobilenet-serve weights fetch --mirror ../shared/pretrained/tflite
  mobilenet-serve weights verify""",
    "predict": """examples:
  mobilenet-serve predict cat.jpg
  mobilenet-serve predict cat.jpg dog.png --model v1 --width 0.5 --topk 3
  mobilenet-serve predict cat.jpg --model MobileNetV2          # any case, others' spellings
  mobilenet-serve predict cat.jpg --width 0.6 --nearest        # nearest loaded width
  mobilenet-serve predict cat.jpg --url http://10.0.0.5:8000 --json""",
    "models": """examples:
  mobilenet-serve models
  mobilenet-serve models --url http://127.0.0.1:8000 --json""",
}


def _settings(**overrides: object):
    from app.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------------ serve
def cmd_serve(args: argparse.Namespace) -> int:
    from app.server import run

    settings = _settings(host=args.host, port=args.port, workers=args.workers)
    run(settings)
    return 0


# ---------------------------------------------------------------------------- weights
def cmd_weights(args: argparse.Namespace) -> int:
    from app.errors import WeightsError
    from app.weights import SPECS, default_variants, fetch_variants, resolve_variants
    from app.weights.fetch import torch_available
    from app.weights.store import TORCH_EXTRA_HINT, is_current, read_manifest

    settings = _settings(weights_dir=args.dir, weights_mirror=args.mirror)
    weights_dir, mirror = Path(settings.weights_dir), settings.weights_mirror
    if args.action == "list":
        print(f"{'variant':30s} {'origin':12s} {'params':>10s} {'top-1':>6s}  status")
        for s in SPECS:
            status = (
                "present"
                if is_current(weights_dir, s)
                else "present (LiteRT only)"
                if is_current(weights_dir, s, converted=False)
                else "missing"
            )
            acc = f"{s.accuracy.top1:.1f}" if s.accuracy else "-"
            print(f"{s.name:30s} {s.origin:12s} {s.params:>10,d} {acc:>6s}  {status}")
        return 0
    if args.action == "verify":
        entries = read_manifest(weights_dir)["variants"]
        bad = [
            n
            for n in entries
            if not is_current(weights_dir, resolve_variants([n])[0], converted=False)
        ]
        for name in entries:
            print(f"{name:30s} {'FAILED' if name in bad else 'ok'}")
        return 1 if bad or not entries else 0
    try:
        if args.all and not torch_available():  # a lean (LiteRT) install: all it can serve
            specs = [s for s in SPECS if s.origin == "tflite"]
            print(
                "torch is not installed: fetching the TF-origin variants only (LiteRT); "
                f"for the torchvision ones: {TORCH_EXTRA_HINT}",
                file=sys.stderr,
            )
        elif args.all:
            specs = list(SPECS)
        elif args.variants:
            specs = resolve_variants(args.variants)
        else:
            specs = default_variants(mirror)
    except WeightsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    where = f"mirror {mirror} (else upstream)" if mirror else "upstream URLs"
    print(f"fetching {len(specs)} variant(s) from {where} into {weights_dir}", file=sys.stderr)

    def report(r) -> None:
        print(f"  {r.variant:30s} {r.status:10s} {r.message}", file=sys.stderr)

    results = fetch_variants(
        specs, weights_dir=weights_dir, mirror=mirror, force=args.force, on_result=report
    )
    failed = [r for r in results if r.status == "failed"]
    return 1 if failed else 0


# ---------------------------------------------------------------------- HTTP client
def _client(args: argparse.Namespace):
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout)


def cmd_predict(args: argparse.Namespace) -> int:
    import httpx

    params = {
        k: v
        for k, v in {
            "model": args.model,
            "width": args.width,
            "resolution": args.resolution,
            "variant": args.variant,
            "fallback": "nearest" if args.nearest else None,
            "topk": args.topk,
        }.items()
        if v is not None
    }
    status = 0
    out = []
    with _client(args) as client:
        for image in args.images:
            path = Path(image)
            try:
                with path.open("rb") as f:
                    r = client.post("/predict", params=params, files={"file": (path.name, f)})
            except OSError as exc:
                print(f"{image}: cannot read: {exc}", file=sys.stderr)
                status = 1
                continue
            except httpx.HTTPError as exc:
                print(f"{args.url}: {exc}", file=sys.stderr)
                return 2
            body = r.json()
            if r.status_code != 200:
                print(f"{image}: HTTP {r.status_code} {body['error']['message']}", file=sys.stderr)
                status = 1
                continue
            out.append({"image": image, **body})
            if not args.json:
                v, t = body["variant"], body["timings"]
                print(
                    f"{image}  [{v['name']} {v['backend']}/{v['device']}, {t['total_ms']:.1f} ms]"
                )
                if v.get("fallback"):
                    print(f"  (nearest loaded: asked {v['fallback']['asked']})")
                for p in body["predictions"]:
                    bar = "#" * round(p["score"] * 30)
                    print(f"  {p['score']:6.1%} {p['index']:4d} {p['label']:28s} {bar}")
    if args.json:
        print(json.dumps(out, indent=2))
    return status


def cmd_models(args: argparse.Namespace) -> int:
    import httpx

    try:
        with _client(args) as client:
            body = client.get("/models").json()
    except httpx.HTTPError as exc:
        print(f"{args.url}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"{'variant':30s} {'model':9s} {'width':>5s} {'res':>4s} {'backend':8s} {'top-1':>6s}")
    for m in body["models"]:
        acc = f"{m['accuracy']['top1']:.1f}" if m["accuracy"] else "-"
        print(
            f"{m['name']:30s} {m['model']:9s} {m['width']:5g} {m['resolution']:4d} "
            f"{m['backend']:8s} {acc:>6s}"
        )
    print("aliases: " + ", ".join(f"{k} -> {v}" for k, v in body["aliases"].items()))
    return 0


# ------------------------------------------------------------------------------ main
def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("MOBILENET_URL", "http://127.0.0.1:8000"),
        help="server address (env MOBILENET_URL)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("MOBILENET_API_KEY"),
        help="bearer token, if the server needs one",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds")
    p.add_argument("--json", action="store_true", help="print the raw JSON")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mobilenet-serve",
        formatter_class=fmt,
        description="MobileNet V1/V2/V3 image classification service.",
        epilog="\n\n".join(EXAMPLES.values()),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve", help="run the HTTP service", epilog=EXAMPLES["serve"], formatter_class=fmt
    )
    p.add_argument("--host", help="default MOBILENET_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default MOBILENET_PORT or 8000")
    p.add_argument(
        "--workers",
        type=int,
        help="processes, each loading the models (default MOBILENET_WORKERS or 1)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "weights",
        help="list, fetch and verify model weights",
        epilog=EXAMPLES["weights"],
        formatter_class=fmt,
    )
    p.add_argument("action", choices=["fetch", "list", "verify"])
    p.add_argument("variants", nargs="*", help="variant names (see `weights list`)")
    p.add_argument("--all", action="store_true", help="every known variant")
    p.add_argument(
        "--mirror",
        help="directory or http(s) base URL of upstream files (default MOBILENET_WEIGHTS_MIRROR)",
    )
    p.add_argument(
        "--dir", type=Path, help="weights directory (default MOBILENET_WEIGHTS_DIR or weights/)"
    )
    p.add_argument("--force", action="store_true", help="re-fetch even if up to date")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser(
        "predict",
        help="classify images with a running server",
        epilog=EXAMPLES["predict"],
        formatter_class=fmt,
    )
    p.add_argument("images", nargs="+")
    p.add_argument(
        "--model",
        help="v1, v2, v3, v3-small, v3-large, any case, or another library's spelling "
        "(mobilenet_v2, MobileNetV3Small, mobilenet_v1_0.5_160; `models` lists them)",
    )
    p.add_argument(
        "--width", type=float, help="width multiplier, e.g. 0.25 (alone: the best model with it)"
    )
    p.add_argument("--resolution", type=int)
    p.add_argument("--variant", help="a variant or release name, e.g. v1-0.5-160")
    p.add_argument(
        "--nearest",
        action="store_true",
        help="if that width/resolution is not loaded, use the nearest loaded (fallback=nearest)",
    )
    p.add_argument("--topk", type=int, default=5)
    _client_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "models",
        help="list a running server's models",
        epilog=EXAMPLES["models"],
        formatter_class=fmt,
    )
    _client_args(p)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `weights fetch --mirror DIR v1-0.25-128`: names after options land in `extra`.
    if (
        extra
        and getattr(args, "variants", None) is not None
        and not any(e.startswith("-") for e in extra)
    ):
        args.variants = [*args.variants, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
