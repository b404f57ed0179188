"""A radix tree over token ids: which stored prefixes does a prompt start with, and which is the longest.

The tree is keyed by the exact tokens, so two different prefixes can never be confused (no hash to collide);
each edge holds a run of tokens, so a long prompt costs one node per branching point, not one per token.
`longest` walks the prompt once: O(prompt length).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

Value = TypeVar("Value")


class _Node(Generic[Value]):
    __slots__ = ("edge", "children", "value", "parent")

    def __init__(self, edge: tuple[int, ...], parent: _Node[Value] | None) -> None:
        self.edge = edge  # the tokens from the parent to this node
        self.children: dict[int, _Node[Value]] = {}  # by the first token of the child's edge
        self.value: Value | None = None  # set: a stored prefix ends here
        self.parent = parent


class PrefixIndex(Generic[Value]):
    """Maps token prefixes to values; finds the longest stored prefix of a sequence."""

    def __init__(self) -> None:
        self._root: _Node[Value] = _Node((), None)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def insert(self, tokens: Sequence[int], value: Value) -> None:
        """Store `value` under exactly `tokens` (replacing any value there). `tokens` must not be empty."""
        if not tokens:
            raise ValueError("cannot index an empty prefix")
        key = tuple(tokens)
        node, i = self._root, 0
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                leaf = _Node(key[i:], node)
                node.children[key[i]] = leaf
                node = leaf
                break
            common = _common_length(child.edge, key, i)
            if common < len(child.edge):  # split the edge: node -> middle -> child
                middle = _Node(child.edge[:common], node)
                node.children[key[i]] = middle
                child.edge = child.edge[common:]
                child.parent = middle
                middle.children[child.edge[0]] = child
                child = middle
            node, i = child, i + common
        if node.value is None:
            self._count += 1
        node.value = value

    def longest(self, tokens: Sequence[int]) -> tuple[int, Value] | None:
        """(length, value) of the longest stored prefix of `tokens`, or None."""
        best: tuple[int, Value] | None = None
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None or _common_length(child.edge, tokens, i) < len(child.edge):
                break
            node, i = child, i + len(child.edge)
            if node.value is not None:
                best = (i, node.value)
        return best

    def get(self, tokens: Sequence[int]) -> Value | None:
        node = self._find(tokens)
        return None if node is None else node.value

    def remove(self, tokens: Sequence[int]) -> Value | None:
        """Drop the value stored under exactly `tokens` (returned; None if there was none) and prune the tree."""
        node = self._find(tokens)
        if node is None or node.value is None:
            return None
        value, node.value = node.value, None
        self._count -= 1
        while node.parent is not None and node.value is None and len(node.children) <= 1:
            parent = node.parent
            if node.children:  # one child: merge it into this node's place
                (child,) = node.children.values()
                child.edge = node.edge + child.edge
                child.parent = parent
                parent.children[node.edge[0]] = child
            else:
                del parent.children[node.edge[0]]
            node = parent
        return value

    def _find(self, tokens: Sequence[int]) -> _Node[Value] | None:
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None or len(child.edge) > len(tokens) - i:
                return None
            if _common_length(child.edge, tokens, i) < len(child.edge):
                return None
            node, i = child, i + len(child.edge)
        return node if tokens else None


def _common_length(edge: tuple[int, ...], tokens: Sequence[int], start: int) -> int:
    """How many leading tokens of `edge` equal tokens[start:]."""
    limit = min(len(edge), len(tokens) - start)
    n = 0
    while n < limit and edge[n] == tokens[start + n]:
        n += 1
    return n
