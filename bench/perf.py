"""``python -m bench perf WHAT``: performance tables of the project's own kernels (never timed
tests).

Each target is a module ``bench.perf_<what>`` exposing ``add_arguments(parser)`` and ``main(args)``;
``python -m bench`` dispatches to it (``medq.cli.run_subcommand``).
"""

SUBCOMMANDS = {
    "ssim": ("bench.perf_ssim", "forward+backward time and peak memory of our SSIM loss against "
                                "the reference libraries"),
    "data": ("bench.perf_data", "synthetic fundus images per second"),
    "train": ("bench.perf_train", "step time, model FLOPs and utilisation per preset; peak memory "
                                  "per decode chunk"),
    "infer": ("bench.perf_infer", "inference harness images per second and utilisation at the "
                                  "default config"),
    "checkpoint": ("bench.perf_checkpoint", "save and verify time of a training checkpoint, and "
                                            "the share of its per-file sha256"),
    "features": ("bench.perf_features", "FID/KID feature backbones (Inception, random "
                                        "ResNet-18) images per second at 299 px"),
    "main": ("bench.perf_main", "stage times of the last make train-v3 && make eval, read from its "
                                "files"),
}
