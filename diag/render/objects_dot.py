"""A back-reference chain as a graphviz ``.dot`` graph (rendered by ``dot -Tsvg``; graphviz
is not needed to write it)."""

from __future__ import annotations

from diag.model.heap_snapshot import BackrefChain, ChainLink
from diag.render.formatting import safe_text
from diag.render.objects_text import link_label, via_label


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node(link: ChainLink) -> str:
    return _quote(safe_text(link_label(link)) + f"\n{link.id}")


def dot_text(chain: BackrefChain) -> str:
    lines = ["digraph backrefs {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for i, link in enumerate(chain.chain):
        attrs = ", style=filled, fillcolor=lightgreen" if i == 0 and chain.found else ""
        if i == len(chain.chain) - 1:
            attrs = ", style=filled, fillcolor=lightcoral"
        lines.append(f"  n{i} [label={_node(link)}{attrs}];")
    for i in range(1, len(chain.chain)):
        lines.append(f"  n{i - 1} -> n{i} [label={_quote(safe_text(via_label(chain.chain[i])))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
