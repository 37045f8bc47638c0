"""One home per kind of source: what it is, how long it is, this process's share of it,
which saved states can belong to it, and how to open a :class:`~fastbridge._position.Reader`
on it where a saved state left off.

:func:`make_source` looks at the user's object once and returns one of

* :class:`TfDataSource`: a ``tf.data.Dataset`` (read as NumPy, or as tensors for ``direct``);
  resumes by replaying (``skip``) or, with ``checkpoint=True``, from its iterator's own state
  plus the batches read ahead (``_position.TfLog``);
* :class:`IterableSource`: any other iterable of pytrees; resumes from its iterator's
  ``get_state()``/``set_state()`` when it has them (Grain-style), else by replaying;
* :class:`DictStateSource`: an iterable with ``state_dict()``/``load_state_dict()`` (Hugging
  Face ``IterableDataset``, torchdata): the object is loaded before it is iterated again.

Nothing else in the package asks which kind a source is.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._multihost import EveryNth
from ._position import Position, Reader, TfLog, close_iterator, opened
from ._state import Checkpointable, SavedState, StateDictSource, decode_items, encode_value
from ._tfdata import (
    cardinality,
    check_checkpoint,
    hides_tensorflow_gpus,
    is_dataset,
    keep_tensorflow_off,
    load_iterator,
    pipeline_facts,
    skip,
)

if TYPE_CHECKING:
    import jax

    from ._options import StreamOptions
    from ._padding import Padder
    from ._tfdata import PipelineFacts


class Source:
    """The user's source, seen once. Subclasses say how it is read and resumed."""

    facts: PipelineFacts | None = None
    """What a tf.data pipeline does (``None`` for other sources): backends decide on it."""

    def __init__(self, obj: Any, whole: Source | None = None) -> None:
        self.obj = obj
        # The source before it was split per process: padding takes its shape from its first
        # batch when this process has none of its own.
        self._whole = whole if whole is not None else self

    def length(self) -> int | None:
        """How many batches it yields, when it says (``None``: unknown or endless)."""
        try:
            return len(self.obj)
        except TypeError:
            return None

    def shard(self, count: int, index: int) -> Source:
        """This process's share: items ``index, index + count, ...``."""
        raise NotImplementedError

    def check_state(self, saved: SavedState, limit: int | None) -> None:
        """Refuse a state that cannot belong to this source, before anything is read."""
        total = limit if limit is not None else self.length()
        if total is not None and saved.batches > total:
            raise ValueError(
                f"state['batches'] = {saved.batches}, but this source has {total} batches: the "
                "state was saved from another source"
            )

    def check_rewind(self) -> None:
        """Refuse ``set_state()`` when the batches before a state cannot be read again."""

    @property
    def reopens_alongside(self) -> bool:
        """Whether a new reader can be opened while the old one still reads (``set_state()``
        then restores first and stops the old run after, so a refused state changes nothing)."""
        return False

    def open(
        self,
        saved: SavedState | None,
        *,
        numpy_items: bool,
        limit: int | None = None,
        padder: Padder | None = None,
    ) -> Reader:
        """A reader that starts where ``saved`` left off (``None``: the beginning). A state the
        source refuses raises ``ValueError`` here, before any batch is read."""
        items, stateful, log, owned = self._items(saved, numpy_items)
        template = self._whole._first(numpy_items) if limit is not None else None
        start = Position(0)
        if saved is not None:
            start = Position(
                saved.batches, None if saved.source is None else encode_value(saved.source)
            )
        return Reader(
            items,
            start=start,
            stateful=stateful,
            log=log,
            limit=limit,
            padder=padder,
            template=template,
            owned=owned,
        )

    def _items(
        self, saved: SavedState | None, numpy_items: bool
    ) -> tuple[Iterator[Any], Any, TfLog | None, Any]:
        """``(items, stateful, log, owned)``: what to read, the iterator whose ``get_state()``
        goes into every position, the tf.data log, and the iterator the stream must close."""
        raise NotImplementedError

    def _first(self, numpy_items: bool) -> Callable[[], Any]:
        """A function giving the first batch (the shape of padding, see ``_multihost``)."""

        def first() -> Any:
            iterator = iter(self.obj)
            try:
                return next(iterator, None)
            finally:
                close_iterator(opened(self.obj, iterator))

        return first


class TfDataSource(Source):
    """A ``tf.data.Dataset``."""

    def __init__(
        self, ds: Any, facts: PipelineFacts, *, checkpoint: bool, whole: Source | None = None
    ) -> None:
        super().__init__(ds, whole)
        self.facts: PipelineFacts = facts
        self._checkpoint = checkpoint

    def length(self) -> int | None:
        return cardinality(self.obj)

    def shard(self, count: int, index: int) -> Source:
        return TfDataSource(
            self.obj.shard(count, index), self.facts, checkpoint=self._checkpoint, whole=self
        )

    def check_state(self, saved: SavedState, limit: int | None) -> None:
        if saved.source is not None:
            raise ValueError(
                "state['source'] holds a source iterator's own state (a Grain-style source), "
                "but this source is a tf.data.Dataset"
            )
        super().check_state(saved, limit)

    @property
    def reopens_alongside(self) -> bool:
        return True  # every iter() is a new, independent iterator of the dataset

    def _iterator(self, ds: Any, numpy_items: bool) -> Iterator[Any]:
        return iter(ds.as_numpy_iterator() if numpy_items else ds)

    def _items(
        self, saved: SavedState | None, numpy_items: bool
    ) -> tuple[Iterator[Any], Any, TfLog | None, Any]:
        ds = self.obj
        batches = saved.batches if saved is not None else 0
        if saved is None or saved.tf_iterator is None:
            if not self._checkpoint:
                return self._iterator(skip(ds, batches), numpy_items), None, None, None
            # checkpoint=True from the start, or from a replayed position: read the dataset
            # itself (its iterator state then fits every later resume) and drop.
            iterator = self._iterator(ds, numpy_items)
            log = TfLog(iterator, pending=[], drop=batches, base=None, start=batches)
            return iterator, None, log, None
        iterator = self._iterator(ds, numpy_items)
        load_iterator(iterator, saved.tf_iterator)
        pending = decode_items(saved.pending, ds.element_spec, numpy_items)
        if self._checkpoint:
            return iterator, None, TfLog.resumed(iterator, saved, pending), None
        chained = itertools.chain(pending, iterator)
        return itertools.islice(chained, saved.skip, None), None, None, None

    def _first(self, numpy_items: bool) -> Callable[[], Any]:
        return lambda: next(self._iterator(self.obj.take(1), numpy_items), None)


class IterableSource(Source):
    """Any other iterable of pytrees; Grain-style iterators resume from their own state."""

    def shard(self, count: int, index: int) -> Source:
        # Always an IterableSource, for a DictStateSource too: the share is a new object
        # without state_dict(), whose iterator resumes from its own get_state() when the
        # source's iterator has one, else by replaying.
        return IterableSource(EveryNth(self.obj, count, index), whole=self)

    def check_state(self, saved: SavedState, limit: int | None) -> None:
        if saved.tf_iterator is not None:
            raise ValueError(
                "state['tf_iterator'] holds a tf.data iterator state, but this source is not a "
                "tf.data.Dataset"
            )
        super().check_state(saved, limit)

    def check_rewind(self) -> None:
        # An iterator is its own one pass (asked without calling iter(), which for a Grain
        # dataset would open an iterator, workers and all, only to throw it away). Asked of
        # the user's object, not of this process's share of it.
        obj = self._whole.obj
        if isinstance(obj, Iterator) and not isinstance(obj, Checkpointable):
            raise ValueError(
                "set_state() cannot move this source: it is a one-shot iterator (iter() "
                "returns itself) without get_state()/set_state(), so the batches before "
                "the state cannot be read again. Pass a re-iterable source (a list, a "
                "dataset) or a Grain-style iterator"
            )

    def _items(
        self, saved: SavedState | None, numpy_items: bool
    ) -> tuple[Iterator[Any], Any, TfLog | None, Any]:
        iterator = iter(self.obj)
        owned = opened(self.obj, iterator)
        stateful = iterator if isinstance(iterator, Checkpointable) else None
        if saved is not None and saved.source is not None:
            if stateful is None:
                close_iterator(owned)
                raise ValueError(
                    "state['source'] holds a source iterator's state, but this source's "
                    "iterator has no get_state()/set_state()"
                )
            _load(lambda: iterator.set_state(saved.source), "set_state()", owned)
            return iterator, stateful, None, owned
        return _replayed(iterator, saved), stateful, None, owned


class DictStateSource(IterableSource):
    """An iterable with ``state_dict()``/``load_state_dict()`` (:class:`StateDictSource`):
    its state is taken from the object after each batch, and loaded before ``iter()``."""

    def _items(
        self, saved: SavedState | None, numpy_items: bool
    ) -> tuple[Iterator[Any], Any, TfLog | None, Any]:
        source = self.obj
        if saved is not None and saved.source is not None:
            state = saved.source
            _load(lambda: source.load_state_dict(state), "load_state_dict()", None)
            saved = None  # the loaded object starts where the state left off
        iterator = iter(source)
        return _replayed(iterator, saved), _DictState(source), None, opened(source, iterator)


class _DictState:
    """A :class:`StateDictSource` seen as the ``get_state()`` the reader snapshots."""

    def __init__(self, source: StateDictSource) -> None:
        self._source = source

    def get_state(self) -> Any:
        return self._source.state_dict()


def _load(load: Callable[[], None], method: str, owned: Any) -> None:
    try:
        load()
    except Exception as error:
        close_iterator(owned)
        raise ValueError(
            f"state['source'] was refused by the source's {method}: {type(error).__name__}: {error}"
        ) from error


def _replayed(iterator: Iterator[Any], saved: SavedState | None) -> Iterator[Any]:
    """``iterator`` past the batches ``saved`` delivered (read and dropped)."""
    batches = saved.batches if saved is not None else 0
    return itertools.islice(iterator, batches, None) if batches else iterator


def check_source(obj: Any) -> None:
    """Refuse what is not a source at all."""
    if isinstance(obj, Mapping):
        raise TypeError(
            f"source is a {type(obj).__name__}: iterating a mapping yields its keys, not "
            "batches. To stream batches from arrays, make a dataset of them, e.g. "
            "fastbridge.from_numpy(arrays).batch(256), or pass a list of batch dicts"
        )
    if isinstance(obj, (str, bytes)) or not hasattr(obj, "__iter__"):
        raise TypeError(
            f"source must be a tf.data.Dataset or an iterable of NumPy pytrees, "
            f"got {type(obj).__name__}"
        )


def make_source(obj: Any, options: StreamOptions, device: jax.Device) -> Source:
    """The :class:`Source` for the user's ``obj``, checked against ``options`` (and, for
    ``service=``, the dataset the service's workers run). Call ``check_source(obj)`` first."""
    if not is_dataset(obj):
        if options.checkpoint:
            raise ValueError(
                "checkpoint=True applies to tf.data sources; other iterables resume exactly "
                "through their iterator's get_state()/set_state(), or by replaying"
            )
        if options.service is not None:
            raise TypeError("service= needs a tf.data.Dataset source")
        by_dict = isinstance(obj, StateDictSource) and not isinstance(obj, Iterator)
        return DictStateSource(obj) if by_dict else IterableSource(obj)
    if hides_tensorflow_gpus(device.platform):
        keep_tensorflow_off()  # usually too late to hide them: then it warns, and how to fix
    facts = pipeline_facts(obj)
    if options.checkpoint:
        check_checkpoint(facts)
    if options.service is not None:
        from .service import distribute

        obj = distribute(obj, options.service)
    return TfDataSource(obj, facts, checkpoint=options.checkpoint)


def known_length(obj: Any) -> int | None:
    """How many batches ``obj`` yields, when it says (``len()`` or tf.data's cardinality)."""
    if is_dataset(obj):
        return cardinality(obj)
    try:
        return len(obj)
    except TypeError:
        return None
