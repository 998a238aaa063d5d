"""``python -m tests.fuzz.run TARGET [libFuzzer options]``: one target under atheris."""

from __future__ import annotations

import sys

import atheris

from tests.fuzz.targets import TARGETS


def main() -> None:
    name = sys.argv.pop(1)
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
