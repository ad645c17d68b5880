"""`dfxm-online` command line: serve | simulate | replay | process | view | store | demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__

logger = logging.getLogger("dfxm_online")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _add_analysis_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", help="detector name (default: the 2D image stream / 3D dataset)")
    p.add_argument("--motors", nargs="+", metavar="MOTOR", help="motors to use (default: those that move)")
    p.add_argument("--background", choices=["auto", "dark", "edges", "none"],
                   help="background before moments (default auto: dark scan if any, else scan edges)")
    p.add_argument("--edge-fraction", type=float, help="fraction of each motor's range per edge band")
    p.add_argument("--min-intensity-fraction", type=float, help="NaN below this fraction of bright pixels")
    p.add_argument("--batch-size", type=int, help="frames per accumulator update")
    p.add_argument("--batch-mb", type=int, help="MiB of raw frames per batch at most (0: no bound; default 256)")
    p.add_argument("--preprocess", type=_json_list, metavar="JSON",
                   help='preprocessing steps in order, e.g. \'[{"step": "hot_pixels"}, '
                        '{"step": "binning", "factor": 2}]\'')
    p.add_argument("--image", action="append", nargs=2, metavar=("NAME", "URL"),
                   help="an image the steps use: mask, flatfield, dark (silx URL; repeat)")
    p.add_argument("--monitor", help="counter normalising each frame (with a 'monitor' step)")
    p.add_argument("--accumulators", nargs="*", metavar="NAME",
                   help="optional accumulators: projections median_background rolling_median "
                        "minimum low_quantile sums_along pca nmf (default: projections)")
    p.add_argument("--precision", choices=["float64", "float32"], help="moment sums' batch products")
    p.add_argument("--moment-window", type=float,
                   help="final moments within N sigma of each pixel's peak (default 3; 0: whole scan)")
    p.add_argument("--moment-window-passes", type=int, help="re-centrings of the window (default 2)")


def _analysis_overrides(args: argparse.Namespace) -> dict:
    return {
        "detector": args.detector, "motors": args.motors, "background": args.background,
        "edge_fraction": args.edge_fraction, "min_intensity_fraction": args.min_intensity_fraction,
        "batch_size": args.batch_size, "batch_mb": args.batch_mb, "preprocess": args.preprocess,
        "images": dict(args.image) if args.image else None, "monitor": args.monitor,
        "accumulators": args.accumulators, "precision": args.precision,
        "moment_window": args.moment_window, "moment_window_passes": args.moment_window_passes,
    }


def _json_of(kind: type, what: str):
    """An argparse type: JSON text that must decode to a `kind` (the error says `what`)."""

    def parse(text: str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected {what}")
        return value

    return parse


_json_list = _json_of(list, "a JSON list of steps")
_json_object = _json_of(dict, "a JSON object of options")


def _binning(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected 'auto' or an integer >= 1") from None


def _scan_end_options(values: dict | None):
    from .analysis.scan_end import ScanEndOptions
    from .config import ConfigError

    try:
        return ScanEndOptions.from_dict(values or {})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--scan-end: {exc}") from None


def _motor_spec(values: list[str]) -> tuple[str, float, float, int]:
    name, start, stop, points = values
    return name, float(start), float(stop), int(points)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfxm-online", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="follow live scans and publish maps")
    p.add_argument("--redis", required=True, help="blissdata Redis URL, e.g. redis://host:port")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--publish-period", type=float, help="seconds between map rewrites (default 1)")
    p.add_argument("--metrics-port", type=int, help="port for /metrics and /status (0: off)")
    p.add_argument("--metrics-address", help="address /metrics and /status listen on (default 127.0.0.1)")
    p.add_argument("--dark-pattern", help="regex on title/name marking dark scans (default 'dark')")
    p.add_argument("--dark", help="dark scan FILE::SCAN used when a session has taken none")
    p.add_argument("--live-binning", type=_binning,
                   help="bin the running scan's maps N x N, or 'auto' (default): the smallest binning that "
                        "holds --latency-budget (the final maps stay full resolution)")
    p.add_argument("--latency-budget", type=float,
                   help="frame-to-map latency (p99, s) the live maps hold (default 0.5)")
    p.add_argument("--post-scan", metavar="WORKFLOW",
                   help="the scan-end workflow: a shipped graph name (default post_scan), a .json path, or none")
    p.add_argument("--ewoksjob", action="store_true",
                   help="run the scan-end workflows on ewoksjob (Celery) workers ([post_scan] celery_config, queue)")
    _add_analysis_flags(p)

    p = sub.add_parser("simulate", help="publish a simulated DFXM scan through blissdata")
    p.add_argument("--redis", required=True)
    p.add_argument("--kind", choices=["rocking", "mosaicity", "strain"], default="mosaicity")
    p.add_argument("--motor", action="append", nargs=4, metavar=("NAME", "START", "STOP", "POINTS"),
                   help="a scanned motor (repeat; the first is the fastest); default per kind")
    p.add_argument("--points", type=int, help="points per default motor")
    p.add_argument("--shape", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    p.add_argument("--rate", type=float, default=0.0, help="frames per second (0: as fast as possible)")
    p.add_argument("--dark-offset", type=float, default=100.0)
    p.add_argument("--read-noise", type=float, default=2.0)
    p.add_argument("--background-photons", type=float, default=0.0,
                   help="diffuse pedestal above the dark, photons per pixel per frame")
    p.add_argument("--background-gradient", type=float, default=0.0,
                   help="the pedestal times 1 + G*x across the detector (x from -1 to 1)")
    p.add_argument("--crystal", choices=["grains", "random"], default="grains",
                   help="sub-grains, or a random curve per pixel (weak peaks, 200-300 counts)")
    p.add_argument("--peak-counts", type=float, default=5000.0)
    p.add_argument("--no-noise", action="store_true", help="publish the noise-free expectation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zigzag", action="store_true")
    p.add_argument("--image-mode", choices=["array", "lima"], default="array")
    p.add_argument("--frames-per-file", type=int, default=10, help="Lima frames per file")
    p.add_argument("--dark-frames", type=int, default=0, help="publish a dark scan of N frames first")
    p.add_argument("--session", default="dfxm")
    p.add_argument("--detector", default="pco")
    p.add_argument("--scan-dir", type=Path, default=Path("scans"))
    p.add_argument("--dataset", default="sample_0001")
    p.add_argument("--truth", type=Path, help="write the model's truth maps to this HDF5 file")

    p = sub.add_parser("replay", help="publish a recorded BLISS scan through blissdata")
    p.add_argument("file", type=Path)
    p.add_argument("--scan", default="1.1", help="scan to publish, '2.1' or '2' (any scan, darks included)")
    p.add_argument("--redis", required=True)
    p.add_argument("--rate", type=float, default=0.0, help="frames per second (0: as fast as possible)")
    p.add_argument("--image-mode", choices=["array", "lima"], default="array")
    p.add_argument("--session", default="replay")
    p.add_argument("--scan-dir", type=Path, default=Path("replay-data"))
    p.add_argument("--detector")

    p = sub.add_parser("process", help="maps of a recorded scan (offline)")
    p.add_argument("file", type=Path)
    p.add_argument("--scan", help="scan to process, '2.1' or '2' (default: the first with moving motors)")
    p.add_argument("--dark", help="dark scan as FILE::SCAN (or SCAN in the same file)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--config", type=Path, help="TOML configuration file ([analysis] table)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-quicklook", action="store_true", help="no PNG of the maps beside the output file")
    p.add_argument("--no-scan-end", action="store_true",
                   help="skip darfix's other analyses (drift, mask, domains, strain, BSS, ...; docs/analyses.md)")
    p.add_argument("--scan-end", type=_json_object, metavar="JSON",
                   help='options of those analyses, e.g. \'{"detector_preset": "pco_edge_2x", "weak_beam_sigma": 3}\'')
    p.add_argument("--no-fit", action="store_true",
                   help="skip the per-pixel Gaussian fits (/entry/fit) after the moments")
    p.add_argument("--fit-peaks", type=int, choices=[1, 2], default=1,
                   help="peaks per pixel in the fits (2: scans of one motor only)")
    p.add_argument("--fit-max-iterations", type=int, default=100,
                   help="Levenberg-Marquardt iterations per pixel at most")
    p.add_argument("--fit-band-mb", type=int, default=1024,
                   help="MiB of frames read at once for the fits (a band of detector rows)")
    _add_analysis_flags(p)

    p = sub.add_parser("view", help="the maps of the current scan, live (silx; needs dfxm-online[viewer])")
    p.add_argument("file", nargs="?", type=Path, help="a maps file to open (and follow)")
    p.add_argument("--redis", help="follow the daemon's announcements on this store (dfxm-online:maps stream)")
    p.add_argument("--output-dir", type=Path, help="without --redis: watch the maps files under this folder")

    p = sub.add_parser("workflows", help="the ewoks graphs shipped with dfxm-online (ewoks execute FILE ...)")
    p.add_argument("--list", action="store_true", help="print the path of each shipped graph")

    p = sub.add_parser("store", help="the embedded blissdata store")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int)
    p.add_argument("--state-dir", type=Path, default=Path(".dfxm-store"))

    p = sub.add_parser("demo", help="store + daemon + simulated scan -> maps and a PNG")
    p.add_argument("--output-dir", type=Path, default=Path("demo-output"))
    p.add_argument("--shape", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--rate", type=float, default=50.0, help="simulated frames per second")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    from .acquisition.geometry import ScanError
    from .config import ConfigError
    from .store import StoreError

    try:
        return _dispatch(args)
    except (ConfigError, ScanError, StoreError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "store":
        from .store import EmbeddedStore

        store = EmbeddedStore(args.state_dir)
        if args.action == "start":
            print(store.start(port=args.port))
        elif args.action == "stop":
            print("stopped" if store.stop() else "not running")
        else:
            info = store.info()
            print(json.dumps({"running": info is not None, **({"url": info.url, "pid": info.pid} if info else {})}))
            return 0 if info else 1
        return 0

    if args.command == "workflows":
        from .workflow.catalog import graph_names, graph_path

        for name in graph_names():
            print(graph_path(name))
        return 0

    if args.command == "serve":
        from .config import load_config
        from .daemon import Daemon

        config = load_config(
            args.config, publish_period=args.publish_period, metrics_port=args.metrics_port,
            metrics_address=args.metrics_address,
            dark_pattern=args.dark_pattern, dark=args.dark,
            live_binning=args.live_binning, latency_budget=args.latency_budget, **_analysis_overrides(args),
        )
        post_scan = {k: v for k, v in (("workflow", args.post_scan), ("ewoksjob", args.ewoksjob or None)) if v is not None}
        if post_scan:
            config.post_scan = config.post_scan.model_copy(update=post_scan)
        Daemon(args.redis, args.output_dir, config).run()
        return 0

    if args.command == "simulate":
        from .acquisition.simulate import SimulationSpec, simulate, write_truth

        spec = SimulationSpec(
            kind=args.kind, motors=[_motor_spec(m) for m in args.motor] if args.motor else None,
            points=args.points, frame_shape=tuple(args.shape), frame_rate=args.rate,
            dark_offset=args.dark_offset, read_noise=args.read_noise,
            background=args.background_photons, background_gradient=args.background_gradient,
            crystal=args.crystal, peak_counts=args.peak_counts,
            noise=not args.no_noise, seed=args.seed, zigzag=args.zigzag,
            image_mode=args.image_mode, frames_per_file=args.frames_per_file,
            session=args.session, detector=args.detector, scan_dir=args.scan_dir,
            dataset=args.dataset, dark_frames=args.dark_frames,
        )
        result = simulate(args.redis, spec)
        if args.truth:
            write_truth(args.truth, result.model)
        print(json.dumps({"scan_key": result.scan_key, "scan": f"{result.scan_number}.1",
                          "file": str(result.filename), "dark_key": result.dark_key}))
        return 0

    if args.command == "replay":
        from .acquisition.replay import replay

        key = replay(args.redis, args.file, args.scan, args.rate, args.image_mode, args.session,
                     args.scan_dir, args.detector)
        print(key)
        return 0

    if args.command == "process":
        from .analysis.fits import FitSettings
        from .config import ConfigError, load_config
        from .offline import process_to_file

        config = load_config(args.config, **_analysis_overrides(args))
        fit = None
        if not args.no_fit:
            fit = FitSettings(max_peaks=args.fit_peaks, max_iterations=args.fit_max_iterations,
                              band_mb=args.fit_band_mb)
            try:
                fit.validate()
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        out = process_to_file(args.file, args.output, args.scan, config.analysis, args.dark,
                              progress=not args.no_progress, fit=fit, quicklook=not args.no_quicklook,
                              scan_end=None if args.no_scan_end else _scan_end_options(args.scan_end))
        print(out)
        return 0

    if args.command == "view":
        try:
            from silx.gui import qt  # noqa: F401 - a Qt binding must be installed

            from .viewer import run_viewer
        except ImportError as exc:
            logger.error("the viewer needs a Qt binding: pip install \"dfxm-online[viewer]\" (%s)", exc)
            return 2
        if not (args.file or args.redis or args.output_dir):
            logger.error("view needs a maps file, --redis URL or --output-dir DIR")
            return 2
        return run_viewer(args.redis, args.output_dir, args.file)

    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.output_dir, tuple(args.shape), args.rate)
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
