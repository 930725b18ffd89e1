"""The embedded demo corpus: English→X pairs from the human translations of Battle for Wesnoth 1.16 (GPL-2+).
Debian/Ubuntu ship the game's gettext catalogues as packages, so any such machine that reaches its package mirror
rebuilds the same naturally imbalanced corpus (~13K pairs for deu/fra/spa/rus down to ~1.7K for heb/afr)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.hostinfo import usable_cores
from pipeline.data.demo_text import LanguageStats, extract_pairs

Log = Callable[[str], None]
# Fills a folder laid out as <locale>/LC_MESSAGES/*.mo under the work dir it is given and returns that folder and
# {package: version}; tests swap in synthetic catalogues through it.
LocaleSource = Callable[[Path, Log], tuple[Path, dict[str, str]]]


@dataclass(frozen=True)
class DemoDirection:
    src: str
    tgt: str
    group: str  # "hrl" or "lrl"
    locale: str  # the folder of Wesnoth's locale tree that holds this language

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"


DEMO_DIRECTIONS: tuple[DemoDirection, ...] = tuple(
    DemoDirection("eng", tgt, group, locale)
    for tgt, group, locale in (
        ("deu", "hrl", "de"), ("fra", "hrl", "fr"), ("spa", "hrl", "es"), ("rus", "hrl", "ru"),
        ("kor", "lrl", "ko"), ("ell", "lrl", "el"), ("heb", "lrl", "he"), ("afr", "lrl", "af"),
    )
)  # fmt: skip

CORPUS_NAME = "wesnoth-1.16"
CORPUS_VERSION = "v1"  # bump whenever cleaning or splitting changes, so stale caches are rebuilt
# The core package holds only ~5K segments per language; the campaigns ship their own catalogues.
CAMPAIGNS = ("did", "dm", "dw", "ei", "httt", "l", "low", "nr", "sof", "sota", "sotbe", "thot", "trow", "tsg", "ttb", "utbs")
PACKAGES = ("wesnoth-1.16-data", *(f"wesnoth-1.16-{c}" for c in CAMPAIGNS))
MAX_EVAL = 400
MIN_EVAL = 50
HELD_ELSEWHERE = "held_out_elsewhere"  # a split label and a drop reason, see assign_splits
MARKER = ".complete"
_HINT = (
    "To train on another corpus instead: mmtc run stages/demo.yaml --set data.corpus=PATH/TO/manifest.yaml "
    "(a corpus manifest, see the README)."
)


class DemoUnavailable(RuntimeError):
    """The demo corpus cannot be built here (no apt, no mirror, broken packages)."""


def _unavailable(what: str) -> DemoUnavailable:
    return DemoUnavailable(f"cannot build the Wesnoth demo corpus: {what}\n{_HINT}")


def demo_root(cache_dir: Path) -> Path:
    return Path(cache_dir) / "demo" / f"{CORPUS_NAME}-{CORPUS_VERSION}"


def eval_size(n_pairs: int) -> int:
    """Pairs in each of dev and test: min(400, max(50, 10%)), but at most a third so a tiny direction trains."""
    return min(MAX_EVAL, max(MIN_EVAL, n_pairs // 10), n_pairs // 3)


def split_key(english: str) -> bytes:
    return hashlib.blake2b(english.encode("utf-8"), digest_size=16, person=b"mmtc-demo-split").digest()


def assign_splits(english: Mapping[str, Iterable[str]]) -> dict[str, dict[str, str]]:
    """{direction: {english: "train" | "dev" | "test" | HELD_ELSEWHERE}}.

    An English sentence has one split in every direction, so no direction trains on a source another one is
    evaluated on. Directions are filled smallest first, each walking its sentences in hash order and taking
    sentences already held out elsewhere before new ones; low-resource directions thus get their full dev/test
    sizes, and a larger direction whose dev/test is full leaves the surplus held-out sentences out altogether
    (HELD_ELSEWHERE) rather than train on them."""
    chosen: dict[str, str] = {}
    sentences = {name: sorted(set(items), key=lambda s: (split_key(s), s)) for name, items in english.items()}
    out: dict[str, dict[str, str]] = {}
    for name in sorted(sentences, key=lambda n: (len(sentences[n]), n)):
        size, fill, mine = eval_size(len(sentences[name])), {"dev": 0, "test": 0}, {}
        held = [s for s in sentences[name] if chosen.get(s) in fill]
        for s in held + [s for s in sentences[name] if chosen.get(s) not in fill]:
            split = chosen.get(s)
            if split is None:
                split = "train" if min(fill.values()) >= size else min(("test", "dev"), key=lambda k: fill[k])
                chosen[s] = split
            if split in fill:
                if fill[split] < size:
                    fill[split] += 1
                else:
                    split = HELD_ELSEWHERE
            mine[s] = split
        out[name] = mine
    return out


def _apt_download(dest: Path, log: Log) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise _unavailable("apt-get/dpkg-deb not found (the corpus comes from Debian/Ubuntu packages)")
    for attempt in (1, 2):
        try:
            done = subprocess.run(["apt-get", "download", "-q", *PACKAGES], cwd=dest, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired as err:
            raise _unavailable("`apt-get download` timed out after 30 min") from err
        if done.returncode == 0:
            return
        error = (done.stderr or done.stdout).strip()[-2000:]
        unknown = "Unable to locate package" in error or "no installation candidate" in error
        # A fresh container often has empty package lists; refreshing them is harmless when we may.
        if unknown and attempt == 1 and os.geteuid() == 0:
            log("demo: apt has no Wesnoth packages listed; running `apt-get update` once")
            update = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=1800)
            if update.returncode != 0:
                raise _unavailable(f"`apt-get update` failed:\n{update.stderr.strip()[-2000:]}")
            continue
        tip = " (apt's package lists may be empty: run `apt-get update` as root, then retry)" if unknown else ""
        raise _unavailable(f"`apt-get download {' '.join(PACKAGES)}` failed{tip}:\n{error}")


_CATALOGUE = re.compile(r"/locale/([^/]+)/LC_MESSAGES/([^/]+\.mo)$")


def _unpack(deb: Path, locale_dir: Path, locales: set[str]) -> tuple[str, str]:
    """Stream the package's files and keep only our languages' catalogues; returns (package, version)."""
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True, check=True)
    meta = dict(line.split(": ", 1) for line in fields.stdout.splitlines() if ": " in line)
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                found = _CATALOGUE.search(member.name)
                if member.isfile() and found and found.group(1) in locales:
                    target = locale_dir / found.group(1) / "LC_MESSAGES" / found.group(2)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise _unavailable(f"`dpkg-deb --fsys-tarfile {deb.name}` failed (exit {proc.returncode})")
    return meta.get("Package", deb.name), meta.get("Version", "?")


def fetch_wesnoth_catalogues(work: Path, log: Log) -> tuple[Path, dict[str, str]]:
    """apt-get download the Wesnoth 1.16 packages into work/ and extract the demo languages' catalogues."""
    debs, locale_dir = work / "debs", work / "locale"
    debs.mkdir(parents=True)
    start = time.monotonic()
    log(f"demo: downloading {len(PACKAGES)} Wesnoth 1.16 packages (~270 MB) with apt-get download")
    _apt_download(debs, log)
    files = sorted(debs.glob("*.deb"))
    size = sum(f.stat().st_size for f in files) / 1e6
    log(f"demo: downloaded {len(files)} packages, {size:.0f} MB in {time.monotonic() - start:.1f}s; extracting catalogues")
    locales = {d.locale for d in DEMO_DIRECTIONS}
    with ThreadPoolExecutor(max_workers=max(2, min(4, usable_cores()))) as pool:
        versions = dict(pool.map(lambda deb: _unpack(deb, locale_dir, locales), files))
    shutil.rmtree(debs)  # the .debs are ~270 MB we never need again
    return locale_dir, dict(sorted(versions.items()))


def _manifest(directions: Iterable[DemoDirection]) -> str:
    lines = [f"name: {CORPUS_NAME}", "directions:"]
    for d in directions:
        lines += [f"  - src: {d.src}", f"    tgt: {d.tgt}", f"    group: {d.group}"]
        lines += [f"    {s}: {{src: {d.name}/{s}.{d.src}, tgt: {d.name}/{s}.{d.tgt}}}" for s in ("train", "dev", "test")]
    return "\n".join(lines) + "\n"


def _write_corpus(locale_dir: Path, out: Path, log: Log) -> dict[str, object]:
    stats = {d.tgt: LanguageStats() for d in DEMO_DIRECTIONS}
    pairs = {}
    for d in DEMO_DIRECTIONS:
        pairs[d.tgt] = extract_pairs(sorted((locale_dir / d.locale / "LC_MESSAGES").glob("*.mo")), stats[d.tgt])
        if not pairs[d.tgt]:
            raise _unavailable(f"no usable {d.tgt} ({d.locale}) segments in the catalogues under {locale_dir}")
    splits = assign_splits({tgt: (src for src, _ in items) for tgt, items in pairs.items()})
    directions: dict[str, dict[str, object]] = {}
    for d in DEMO_DIRECTIONS:
        buckets: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": [], HELD_ELSEWHERE: []}
        for src, tgt in pairs[d.tgt]:
            buckets[splits[d.tgt][src]].append((src, tgt))
        (out / d.name).mkdir()
        for split in ("train", "dev", "test"):
            for lang, side in ((d.src, 0), (d.tgt, 1)):
                with open(out / d.name / f"{split}.{lang}", "w", encoding="utf-8", newline="\n") as f:
                    f.writelines(pair[side] + "\n" for pair in buckets[split])
        st = stats[d.tgt]
        if buckets[HELD_ELSEWHERE]:
            st.segment_drops[HELD_ELSEWHERE] += len(buckets[HELD_ELSEWHERE])
        st.kept = len(pairs[d.tgt]) - len(buckets[HELD_ELSEWHERE])
        counts = {s: len(buckets[s]) for s in ("train", "dev", "test")}
        directions[d.name] = {"group": d.group, "locale": d.locale, **counts}
        log(f"demo: {d.name} ({d.group}) train {counts['train']}, dev {counts['dev']}, test {counts['test']}; "
            f"dropped {sum(st.entry_drops.values())} entries, {sum(st.segment_drops.values())} segments")  # fmt: skip
    return {"directions": directions, "languages": {t: vars(s) for t, s in stats.items()}}


def build_demo_corpus(
    cache_dir: Path, log: Log = print, *, source: LocaleSource = fetch_wesnoth_catalogues
) -> Path:
    """Build the demo corpus once under demo_root(cache_dir) and return its manifest.yaml."""
    root = demo_root(cache_dir)
    if (root / MARKER).exists():
        return root / "manifest.yaml"
    start = time.monotonic()
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.*.partial"):
        if time.time() - stale.stat().st_mtime > 6 * 3600:  # left by a killed build: a live one is far younger
            shutil.rmtree(stale, ignore_errors=True)
    # Built beside its final place and renamed in at the end: an interrupted build never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        locale_dir, versions = source(tmp / "_work", log)
        summary = {"name": CORPUS_NAME, "version": CORPUS_VERSION, "license": "GPL-2.0-or-later",
                   "source": "Battle for Wesnoth 1.16 translations, Debian packages", "packages": versions,
                   **_write_corpus(locale_dir, tmp, log), "build_seconds": round(time.monotonic() - start, 1)}  # fmt: skip
        shutil.rmtree(tmp / "_work", ignore_errors=True)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "manifest.yaml").write_text(_manifest(DEMO_DIRECTIONS), encoding="utf-8")
        (tmp / MARKER).write_text(f"{CORPUS_NAME}-{CORPUS_VERSION}\n", encoding="utf-8")
        if root.exists() and not (root / MARKER).exists():
            shutil.rmtree(root)  # debris from an older layout; a complete corpus is never removed
        try:
            tmp.rename(root)
        except OSError:
            if not (root / MARKER).exists():  # only a concurrent builder that finished first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"demo: corpus ready at {root} ({time.monotonic() - start:.0f}s)")
    return root / "manifest.yaml"
