"""`dynasparse serve`: run one worker (OpenAI-compatible HTTP API, mTLS gRPC control, fast loop).

Defaults serve the embedded default model on loopback without a GPU. Every flag also reads an
environment variable (the Kubernetes Deployment sets POD_NAME, POD_IP and the DYNASPARSE_* ones);
a flag on the command line wins. Called by the CLI (dynasparse/cli.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


HELP = "Serve a model: OpenAI-compatible HTTP API, mTLS gRPC control endpoint, in-pod fast loop."


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _env(name: str, default=None):
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int_env(name: str) -> int | None:
    value = _env(name)
    return int(value) if value is not None else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--model", default=_env("DYNASPARSE_MODEL", "default"),
      help="'default' (embedded SmolLM2-135M-Instruct), a .gguf file, a directory or a hub id")
    a("--calibration", default=_env("DYNASPARSE_CALIBRATION"),
      help="'auto' (the cached calibration, made once on demand) or an artifact path from "
           "`dynasparse calibrate`; "
           "without it the model runs dense and budgets are tracked, not applied")
    a("--device", default=_env("DYNASPARSE_DEVICE", "auto"), help="auto, cpu, cuda, cuda:N")
    a("--host", default=_env("DYNASPARSE_HOST", "127.0.0.1"),
      help="HTTP bind address (0.0.0.0 in a pod)")
    a("--port", type=int, default=int(_env("DYNASPARSE_PORT", 8000)), help="HTTP port (0: any)")
    a("--control-host", default=_env("DYNASPARSE_CONTROL_HOST"),
      help="gRPC bind address (default: --host)")
    a("--control-port", type=int, default=int(_env("DYNASPARSE_CONTROL_PORT", 50051)),
      help="gRPC control port (0: any)")
    a("--tls-dir", type=Path, default=_env("DYNASPARSE_TLS_DIR"),
      help="directory with server.crt, server.key and ca.crt (client CA); without it the control "
           "endpoint is off (it never serves without mTLS)")
    a("--api-key", default=_env("DYNASPARSE_API_KEY"),
      help="bearer token required on /v1/* (env DYNASPARSE_API_KEY)")
    a("--api-key-file", type=Path, default=_env("DYNASPARSE_API_KEY_FILE"),
      help="file holding the bearer token (a mounted Secret), re-read when it changes "
           "(env DYNASPARSE_API_KEY_FILE); instead of --api-key")
    a("--metrics-auth", action=argparse.BooleanOptionalAction,
      default=_env("DYNASPARSE_METRICS_AUTH", "false").lower() in ("1", "true", "yes"),
      help="require the API key on /metrics too (off by default: Prometheus scrapes without a "
           "bearer token unless its scrape config sets one); /healthz and /readyz stay open")
    a("--max-body-bytes", type=int,
      default=_int_env("DYNASPARSE_MAX_BODY_BYTES"),
      help="larger request bodies get 413 without being read (default 1 MiB)")
    a("--body-timeout", type=float,
      default=_float_or_none(_env("DYNASPARSE_BODY_TIMEOUT")),
      help="seconds a request body may take to arrive; slower clients get 408 (default 30)")
    a("--max-connections", type=int, default=int(_env("DYNASPARSE_MAX_CONNECTIONS", 512)),
      help="open connections plus requests in flight; beyond it new requests get a plain 503")
    a("--keep-alive-timeout", type=float, default=float(_env("DYNASPARSE_KEEP_ALIVE_TIMEOUT", 5.0)),
      help="seconds an idle keep-alive connection stays open")
    a("--max-queue", type=int, default=_int_env("DYNASPARSE_MAX_QUEUE"),
      help="requests that may wait for a KV slot before new ones get 429 (default: as many as "
           "there are KV slots, so an admitted request starts within about one generation)")
    a("--report-interval", type=float, default=float(_env("DYNASPARSE_REPORT_INTERVAL", 0.5)),
      help="seconds between control reports (the operator may ask for another)")
    a("--drain-grace", type=float, default=float(_env("DYNASPARSE_DRAIN_GRACE", 30.0)),
      help="seconds in-flight requests get to finish on SIGTERM or a drain")
    a("--deregister-delay", type=float, default=float(_env("DYNASPARSE_DEREGISTER_DELAY", 0.0)),
      help="seconds a draining worker, already not ready, keeps admitting requests while load "
           "balancers stop routing to it (set it to the readiness probe's reaction time)")
    a("--pod-name", default=_env("POD_NAME", os.uname().nodename), help="name used in reports")
    a("--budget", type=float, default=float(_env("DYNASPARSE_BUDGET", 1.0)),
      help="budget before the operator says otherwise, (0, 1]")
    a("--min-budget", type=float, default=_float_or_none(_env("DYNASPARSE_MIN_BUDGET")),
      help="the AdaptiveModel's quality bound as a budget, (0, 1]: no budget below it, ever "
           "(before the operator's first update and with the operator gone too)")
    a("--max-loss", type=float, default=_float_or_none(_env("DYNASPARSE_MAX_LOSS")),
      help="the quality bound as an expected loss (>= 0), mapped through the calibration's "
           "quality curve to the lowest budget allowed")
    a("--max-batch-size", type=int, default=_int_env("DYNASPARSE_MAX_BATCH_SIZE"),
      help="most sequences decoded together (default: on CUDA as many as half the free memory "
           "holds in KV cache, up to 256; on the CPU 16)")
    a("--kv-memory-fraction", type=float,
      default=float(_env("DYNASPARSE_KV_MEMORY_FRACTION", 0.5)),
      help="CUDA: fraction of the free memory after the weights given to the KV cache")
    a("--max-seq-len", type=int, default=int(_env("DYNASPARSE_MAX_SEQ_LEN", 2048)),
      help="prompt + completion tokens per sequence")
    a("--kv-tokens", type=int, default=int(_env("DYNASPARSE_KV_TOKENS", 8192)),
      help="KV cache capacity in tokens on the CPU")
    a("--engine-process", choices=("auto", "on", "off"),
      default=_env("DYNASPARSE_ENGINE_PROCESS", "auto"),
      help="run the engine in a child process of its own, so its thread never waits for the HTTP "
           "side's interpreter lock (auto: on with CUDA, off on the CPU)")
    a("--queue-high", type=int, default=int(_env("DYNASPARSE_QUEUE_HIGH", 8)),
      help="fast loop: waiting requests that tighten the budget")
    a("--log-level", default=_env("DYNASPARSE_LOG_LEVEL", "info"))


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from dynasparse_worker.control.fast_loop import FastLoopConfig
    from dynasparse_worker.errors import UserError
    from dynasparse_worker.server import event_loop
    from dynasparse_worker.server.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
    from dynasparse_worker.server.runtime import ServeSettings, WorkerRuntime

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 0.0 < args.budget <= 1.0:
        raise UserError(f"--budget {args.budget} is not in (0, 1]: pass for example 1.0")
    if args.min_budget is not None and not 0.0 < args.min_budget <= 1.0:
        raise UserError(f"--min-budget {args.min_budget} is not in (0, 1]: pass for example 0.5")
    if args.max_loss is not None and not 0.0 <= args.max_loss < float("inf"):
        raise UserError(f"--max-loss {args.max_loss} is not a loss >= 0: pass for example 0.1")
    if not 0.0 < args.kv_memory_fraction < 1.0:
        raise UserError("--kv-memory-fraction must lie in (0, 1), e.g. 0.5")
    if args.max_queue is not None and args.max_queue < 1:
        raise UserError("--max-queue must be at least 1")
    if args.max_body_bytes is None:
        args.max_body_bytes = DEFAULT_MAX_BODY_BYTES
    if args.body_timeout is None:
        args.body_timeout = DEFAULT_BODY_TIMEOUT_S
    if args.max_body_bytes < 1024 or args.body_timeout <= 0 or args.max_connections < 8:
        raise UserError("--max-body-bytes must be at least 1024, --body-timeout positive and "
                        "--max-connections at least 8")
    pod_ip = _env("POD_IP")
    host = args.host
    settings = ServeSettings(
        model=args.model, calibration=args.calibration, device=args.device, host=host,
        port=args.port, control_host=args.control_host or host, control_port=args.control_port,
        tls_dir=Path(args.tls_dir) if args.tls_dir else None, pod_name=args.pod_name,
        api_key=args.api_key, api_key_file=args.api_key_file, metrics_auth=args.metrics_auth,
        max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout,
        max_connections=args.max_connections, keep_alive_s=args.keep_alive_timeout,
        max_queue=args.max_queue, report_interval_s=args.report_interval,
        drain_grace_s=args.drain_grace,
        deregister_s=args.deregister_delay, initial_budget=args.budget,
        quality_min_budget=args.min_budget, quality_max_loss=args.max_loss,
        max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len,
        kv_tokens=args.kv_tokens, kv_memory_fraction=args.kv_memory_fraction,
        engine_process=args.engine_process,
        fast_loop=dataclasses.replace(FastLoopConfig(), queue_high=args.queue_high,
                                      queue_low=args.queue_high // 4),
    )
    if pod_ip:
        logging.getLogger(__name__).info("pod %s at %s", settings.pod_name, pod_ip)
    return event_loop.run(WorkerRuntime(settings).run())
