"""``glassformer visualize`` (the attention page) and ``glassformer figures`` (the guide's figures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from glassformer.cli.options import add_device_arguments, report_placement

FIGURES = ("attention", "positional-encoding", "similarity", "masks", "curves")


def register(commands: argparse._SubParsersAction) -> None:
    visualize = commands.add_parser(
        "visualize",
        help="an attention page (head view + model view) as one self-contained HTML file",
        description="Run a model on a text and write its attention weights as an HTML page that works offline: a "
        "head view (lines between tokens, a layer selector, head toggles) and a model view (every layer x head; "
        "click to enlarge). Translation models show encoder, decoder and cross attention.",
    )
    add_visualize_arguments(visualize)
    visualize.set_defaults(func=run_visualize)
    figures = commands.add_parser(
        "figures",
        help="the guide's figures with matplotlib (PNG or SVG)",
        description="attention heat maps, the positional-encoding heat map, embedding similarity, padding and "
        "look-ahead masks, training curves.",
    )
    add_figures_arguments(figures)
    figures.set_defaults(func=run_figures)


def add_visualize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text to look at (for a translation model: the source sentence)")
    parser.add_argument(
        "--model", required=True, help="any glassformer model: a run, a checkpoint, minilm, smollm2, a .gguf file"
    )
    parser.add_argument("-o", "--output", default="attention.html", help="the HTML file (default attention.html)")
    parser.add_argument("--target", default=None, help="translation models: the target sentence (default: translate)")
    parser.add_argument("--figures", default=None, help="also write one PNG heat map per layer into this folder")
    add_device_arguments(parser)


def add_figures_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("figure", choices=FIGURES, help="which figure")
    parser.add_argument(
        "texts", nargs="*", help="attention: one text; similarity: words or sentences; masks: sentences"
    )
    parser.add_argument("-o", "--output", required=True, help="the file to write, .png or .svg")
    parser.add_argument("--model", default=None, help="attention: required; similarity: default minilm")
    parser.add_argument("--layer", type=int, default=0, help="attention: the layer (default 0)")
    parser.add_argument("--head", type=int, default=None, help="attention: one head (default: all heads)")
    parser.add_argument("--view", default=None, help="attention of a translation model: encoder, decoder or cross")
    parser.add_argument("--run", default=None, help="curves: the training run directory")
    parser.add_argument("--positions", type=int, default=100, help="positional-encoding: positions (default 100)")
    parser.add_argument("--d-model", type=int, default=512, help="positional-encoding: dimensions (default 512)")
    add_device_arguments(parser)  # attention and similarity run a model


def run_visualize(args: argparse.Namespace) -> None:
    from glassformer.visualization import attention_views, save_attention_html
    from glassformer.visualization.figures import attention_figure

    placement = report_placement(args)
    views = attention_views(args.model, args.text, args.target, placement.device, placement.precision)
    title = f"Attention of {Path(args.model).name}: {args.text[:60]}"
    print(f"wrote {save_attention_html(views, args.output, title)} (open it in a browser; it works offline)")
    if args.figures:
        for view in views:
            for layer in range(view.weights.size(0)):
                path = attention_figure(view, Path(args.figures) / f"{view.name}-layer{layer}.png", layer)
                print(f"wrote {path}")


def run_figures(args: argparse.Namespace) -> None:
    from glassformer.visualization import figures

    if args.figure == "attention":
        from glassformer.visualization import attention_views

        if not args.model or len(args.texts) != 1:
            raise ValueError("figures attention needs --model and one text")
        placement = report_placement(args)
        views = attention_views(args.model, args.texts[0], None, placement.device, placement.precision)
        views = {view.name: view for view in views}
        name = args.view or next(iter(views))
        if name not in views:
            raise ValueError(f"no {name!r} attention in this model; choose one of {', '.join(views)}")
        path = figures.attention_figure(views[name], args.output, args.layer, args.head)
    elif args.figure == "positional-encoding":
        path = figures.positional_encoding_figure(args.output, args.positions, args.d_model)
    elif args.figure == "similarity":
        placement = report_placement(args)
        path = figures.similarity_figure(args.texts, args.output, args.model, placement.device, placement.precision)
    elif args.figure == "masks":
        if not args.texts:
            raise ValueError("figures masks needs sentences, e.g. 'I love cats' 'Hello'")
        if args.model:
            from glassformer.pipelines.language_model import load_language_model
            from glassformer.visualization.attention import readable_tokens

            _, tokenizer = load_language_model(args.model)
            batch = [readable_tokens(tokenizer, tokenizer.encode(text))[0] for text in args.texts]
        else:
            batch = [text.split() for text in args.texts]
        path = figures.masks_figure(batch, args.output)
    else:
        if not args.run:
            raise ValueError("figures curves needs --run RUN_DIRECTORY")
        path = figures.training_curves_figure(args.run, args.output)
    print(f"wrote {path}")
