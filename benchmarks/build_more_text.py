"""More distinct Spanish text for one benchmark question: does the MoE gain on ModernBERT when the data repeats less?

Writes a `.jsonl.gz` corpus: the shared corpus as it is, plus the Spanish documentation of Debian packages that
the shared corpus does not draw on (the Debian Administrator's Handbook, the installation guide, the Securing
Debian manual, the help of GNOME and of ~50 GNOME applications, ~70 KDE applications' handbooks, the Eyes17 manual,
the Ubuntu packaging guide, fortunes-es), cleaned with the shared corpus's own builder
(`../shared/data/build_corpus.py`: its paragraph filters, Spanish test and NFC cleaning). Paragraphs already in the
shared corpus are dropped, and so are paragraphs with more English than Spanish function words and every new document
that the benchmark harness would hold out (`corpus.is_held_out`, 5%), so the held-out set stays the shared corpus's
own and losses stay comparable side by side. Not committed (mixed licenses, each document carries its own); rebuild
with:

    python3 -m venv /tmp/bs4 && /tmp/bs4/bin/pip install beautifulsoup4 lxml
    /tmp/bs4/bin/python benchmarks/build_more_text.py --work /tmp/esx --output outputs/more_text/more_text.jsonl.gz

Needs Debian 12's apt (`apt-get download`, `dpkg-deb`) and the shared corpus beside the checkout.
"""

import argparse
import gzip
import importlib.util
import json
import random
import re
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
from spanish_moe_bert.corpus import is_held_out, iter_jsonl_records  # noqa: E402

if not (SHARED / "build_corpus.py").is_file() or not (SHARED / "es_corpus.jsonl.gz").is_file():
    sys.exit(
        f"build_more_text.py needs the shared corpus and its builder beside the checkout: {SHARED}/"
        "es_corpus.jsonl.gz and build_corpus.py"
    )
spec = importlib.util.spec_from_file_location("build_corpus", SHARED / "build_corpus.py")
build_corpus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_corpus)

# package: (license, glob of its Spanish files, kind)
PACKAGES = {
    "debian-handbook": ("GPL-2.0-or-later", "usr/share/doc/debian-handbook/html/es-ES/*.html", "publican"),
    "installation-guide-amd64": ("GPL-2.0-or-later", "usr/share/doc/installation-guide-amd64/es/*.html", "html"),
    "harden-doc": ("GPL-2.0-or-later", "usr/share/doc/harden-doc/html/es-ES/*.html", "publican"),
    "ubuntu-packaging-guide-html-es": ("CC-BY-SA-3.0", "usr/share/doc/ubuntu-packaging-guide-html-es/*.html", "html"),
    "gnome-user-docs": ("CC-BY-SA-3.0", "usr/share/help/es/**/*.page", "mallard"),
    "eyes17-manuals-es": ("GPL-3.0-or-later", "usr/share/doc/eyes17/es/eyes17.epub", "epub"),
    "fortunes-es": ("GPL-2.0-or-later", "usr/share/games/fortunes/es/*.fortunes.u8", "fortunes"),
}
# GNOME applications' help (Mallard) and KDE applications' handbooks (DocBook), in Spanish; licenses vary by
# package (mostly CC-BY-SA-3.0 and GFDL-1.2-or-later): each record names its package's copyright file
GNOME_HELP = """evince gedit-common nautilus-data totem-common rhythmbox-data gnome-calculator baobab cheese-common eog
    gnome-disk-utility gnome-system-monitor gnome-clocks gnome-maps gnome-weather epiphany-browser-data file-roller
    seahorse simple-scan brasero-common shotwell-common pitivi aisleriot quadrapassel gnome-mines gnome-sudoku polari
    gnome-boxes gnome-builder gnome-terminal-data gnome-contacts gnome-photos gnome-music gnome-calendar
    gnome-characters gnome-font-viewer gnome-logs gnome-chess five-or-more four-in-a-row gnome-klotski gnome-mahjongg
    gnome-nibbles gnome-robots gnome-tetravex hitori iagno lightsoff swell-foop tali gnome-taquin gnome-devel-docs
    """.split()
KDE_DOCS = """okular dolphin kate konsole kdenlive-data gwenview ark krita-data kmail kontact korganizer kstars-data
    marble-data kdevelop-data k3b-data calligra-data kmymoney kig kalzium-data kgeography-data kturtle ktouch-data
    kwordquiz parley-data cantor kbruch kanagram khangman klettres blinken kpat ksudoku kmahjongg knavalbattle kbounce
    konqueror akregator kaddressbook kalarm kjots knotes kcalc kcharselect kfind kgpg ktimer sweeper filelight
    partitionmanager kdf krdc krfb kget konversation kile kbibtex umbrello lokalize kompare kcachegrind systemsettings
    plasma-desktop-data plasma-workspace-data khelpcenter kinfocenter kmenuedit""".split()
for pkg in GNOME_HELP:
    PACKAGES[pkg] = (f"see /usr/share/doc/{pkg}/copyright", "usr/share/help/es/**/*.page", "mallard")
for pkg in KDE_DOCS:
    PACKAGES[pkg] = (f"see /usr/share/doc/{pkg}/copyright", "usr/share/doc/HTML/es/**/*.docbook", "docbook")


def paragraphs(soup, tag: str) -> list[str]:
    texts = (build_corpus.clean(el.get_text(" ")) for el in soup.find_all(tag))
    return [text for text in texts if build_corpus.good_paragraph(text)]


def publican_docs(path: Path, work: Path) -> list[list[str]]:
    """A Publican page (the Handbook, Securing Debian): its paragraphs are `<div class="para">`; made `<p>` and read
    as the other HTML pages are."""
    soup = build_corpus.BeautifulSoup(path.read_bytes(), "lxml")
    for para in soup.select("div.para"):
        para.name = "p"
    page = work / "publican" / path.parent.name / path.name
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(str(soup), encoding="utf-8")
    return [paras for _, paras in build_corpus.html_docs(page)]


def mallard_docs(path: Path) -> list[list[str]]:
    """A GNOME help page (Mallard XML): its paragraphs, without the credits, code and screens."""
    soup = build_corpus.BeautifulSoup(path.read_bytes(), "xml")
    for bad in soup(["info", "code", "screen", "media", "synopsis"]):
        bad.decompose()
    return [paragraphs(soup, "p")]


def docbook_docs(path: Path) -> list[list[str]]:
    """A KDE handbook chapter (DocBook with KDE's entities, read leniently as HTML): its paragraphs, without
    listings; an entity such as `&kmail;` becomes its name."""
    text = re.sub(r"&(?!(?:lt|gt|amp);)([A-Za-z][\w.-]*);", r"\1", path.read_text(encoding="utf-8", errors="replace"))
    soup = build_corpus.BeautifulSoup(text, "lxml")
    for bad in soup(["screen", "programlisting", "literallayout", "synopsis", "author", "othercredit", "legalnotice"]):
        bad.decompose()
    return [paragraphs(soup, "para")]


def epub_docs(path: Path, work: Path) -> list[list[str]]:
    """Each chapter (XHTML file) of an EPUB, read as the HTML pages are."""
    out = work / "epub" / path.stem
    with zipfile.ZipFile(path) as epub:
        epub.extractall(out)
    pages = [page for page in sorted(out.rglob("*.xhtml")) if page.name != "nav.xhtml"]
    return [paras for page in pages for _, paras in build_corpus.html_docs(page)]


def fortune_docs(path: Path) -> list[list[str]]:
    """One quotation per paragraph (its attribution dropped), ten quotations per document."""
    quotes = []
    for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%"):
        entry = re.split(r"\n\s*--", entry.strip("%\n"), maxsplit=1)[0]
        text = build_corpus.clean(entry)
        if len(text.split()) >= 5:
            quotes.append(text)
    return [quotes[i : i + 10] for i in range(0, len(quotes), 10)]


def is_spanish_paragraph(paragraph: str) -> bool:
    """Not more English function words than Spanish ones: drops the untranslated paragraphs some manuals keep."""
    spanish, english = build_corpus.spanish_score(paragraph)
    return english <= spanish


def documents(pkg: str, pattern: str, kind: str, work: Path):
    root = build_corpus.fetch(pkg, work)
    for path in sorted(root.glob(pattern)):
        if kind == "html":
            yield from (paras for _, paras in build_corpus.html_docs(path))
        elif kind == "publican":
            yield from publican_docs(path, work)
        elif kind == "mallard":
            yield from mallard_docs(path)
        elif kind == "docbook":
            yield from docbook_docs(path)
        elif kind == "epub":
            yield from epub_docs(path, work)
        else:
            yield from fortune_docs(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/esx"), help="where the packages are downloaded")
    parser.add_argument("--output", type=Path, required=True, help="the .jsonl.gz to write")
    parser.add_argument("--held_out_fraction", type=float, default=0.05, help="the harness's (bench_quality.py)")
    args = parser.parse_args()
    (args.work / "x").mkdir(parents=True, exist_ok=True)  # the shared builder's fetch unpacks into work/x/<package>
    shared = [record for _, record in iter_jsonl_records(SHARED / "es_corpus.jsonl.gz")]
    seen = {p.lower() for record in shared for p in record["text"].split("\n")}
    added, stats = [], {}
    for pkg, (package_license, pattern, kind) in PACKAGES.items():
        count = {"license": package_license, "documents": 0, "characters": 0, "held_out_dropped": 0}
        stats[pkg] = count
        for paras in documents(pkg, pattern, kind, args.work):
            fresh = [p for p in paras if p.lower() not in seen and is_spanish_paragraph(p)]
            seen.update(p.lower() for p in fresh)
            text = "\n".join(fresh)
            if len(text.split()) < 30 or not build_corpus.is_spanish(text):
                continue
            if is_held_out(text, args.held_out_fraction):
                count["held_out_dropped"] += 1
                continue
            added.append({"text": text, "source": pkg, "license": package_license})
            count["documents"] += 1
            count["characters"] += len(text)
        print(pkg, count, flush=True)
    records = shared + added
    random.Random(0).shuffle(records)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.output, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    shared_chars = sum(len(r["text"]) for r in shared)
    added_chars = sum(len(r["text"]) for r in added)
    print(
        f"shared: {len(shared)} documents, {shared_chars:,} characters; added: {len(added)} documents, "
        f"{added_chars:,} characters; wrote {args.output}"
    )
    args.output.with_suffix("").with_suffix(".stats.json").write_text(json.dumps(stats, indent=1) + "\n")


if __name__ == "__main__":
    main()
