"""pneumo-hpc command line. Each command is thin: it builds a config and calls one function.

Commands live beside the code they drive and are imported only when used, so `pneumo-hpc env`
never pays for torch/ultralytics imports it does not need.

    pneumo-hpc synth data/rsna --n 800 --seed 0
    pneumo-hpc preprocess --rsna data/rsna --out data/prep
    pneumo-hpc train --data data/prep --model small-cnn --epochs 8 --out runs/serial
    torchrun --nproc_per_node 2 -m pneumo_hpc train --data data/prep --strategy ddp --out runs/ddp
    pneumo-hpc evaluate --run runs/serial --data data/prep
"""
import importlib

import click

from pneumo_hpc import __version__
from pneumo_hpc.offline import ensure_offline

# name -> "module:attribute"; the module imports only click at top level.
COMMANDS = {
    "synth": "pneumo_hpc.data.commands:synth",
    "preprocess": "pneumo_hpc.data.commands:preprocess",
    "train": "pneumo_hpc.classify.commands:train",
    "evaluate": "pneumo_hpc.classify.commands:evaluate",
    "selftest": "pneumo_hpc.classify.commands:selftest",
    "classify": "pneumo_hpc.classify.commands:classify",
    "env": "pneumo_hpc.runtime.commands:env",
    "doctor": "pneumo_hpc.runtime.commands:doctor",
    "detect": "pneumo_hpc.detect.commands:detect",
    "predict": "pneumo_hpc.detect.commands:predict",
    "report": "pneumo_hpc.report.commands:report",
}


def fail(exc: Exception):
    """A library error as a click error: its message (which names the file or setting) and exit code 1."""
    raise click.ClickException(str(exc)) from exc


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pneumo-hpc")
def main():
    """Train and measure pneumonia classifiers/detectors on RSNA chest X-rays, serial to multi-node."""
    ensure_offline()
