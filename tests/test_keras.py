"""Keras 3 on the JAX backend takes a fastbridge stream: fit (with epochs and validation),
evaluate and predict give what the same tf.data pipeline gives, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from fastbridge.keras import dataset  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="fastbridge.keras needs KERAS_BACKEND=jax"
)

ROWS, BATCH = 100, 16  # the last batch is short: 100 = 6 * 16 + 4


def pipeline():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def model(reduction="sum_over_batch_size"):
    m = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    # The same starting weights every time, without keras.utils.set_random_seed: that seeds
    # TensorFlow's global RNG too, which would make later tests' unseeded shuffles seeded.
    rng = np.random.default_rng(1)
    m.set_weights([0.3 * rng.standard_normal(w.shape).astype(w.dtype) for w in m.get_weights()])
    loss = keras.losses.MeanSquaredError(reduction=reduction)
    m.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss, metrics=["mae"])
    return m


def same_weights(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights(), strict=True))


def weight_gap(a, b):
    """The largest difference between the two models' weights, relative to their size."""
    return max(
        float(np.abs(u - v).max() / np.abs(u).max())
        for u, v in zip(a.get_weights(), b.get_weights(), strict=True)
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["auto", "ring", "numpy", "direct"])
def test_fit_evaluate_predict_equal_the_tf_data_pipeline(backend):
    ds = pipeline()
    reference = model()
    expected = reference.fit(ds, epochs=3, validation_data=ds, shuffle=False, verbose=0)
    streamed = model()
    got = streamed.fit(
        dataset(ds, backend=backend, prefetch=2),
        epochs=3,
        validation_data=dataset(ds, backend=backend),
        verbose=0,
    )
    assert got.history == expected.history  # three epochs, each one full pass
    assert same_weights(reference, streamed)
    assert streamed.evaluate(dataset(ds, backend=backend), verbose=0) == reference.evaluate(
        ds, verbose=0
    )
    predicted = streamed.predict(dataset(ds, backend=backend), verbose=0)
    np.testing.assert_array_equal(predicted, reference.predict(ds, verbose=0))
    assert predicted.shape == (ROWS, 1)


@pytest.mark.slow
def test_pad_last_trains_exactly_as_unpadded_with_a_sample_weighted_mean():
    ds = pipeline()
    reference = model("mean_with_sample_weight")
    reference.fit(ds, epochs=2, shuffle=False, verbose=0)
    padded = model("mean_with_sample_weight")
    padded.fit(dataset(ds, pad_last=True), epochs=2, verbose=0)
    # Padding rows weigh nothing: the same training up to float rounding (XLA may fuse the
    # padded shape differently; jax 0.10 gives identical bits, jax 0.12 differs in the last).
    assert weight_gap(reference, padded) < 1e-5
    unweighted = model()  # the default reduction divides by rows, padding included
    unweighted.fit(dataset(ds, pad_last=True), epochs=2, verbose=0)
    assert weight_gap(reference, unweighted) > 1e-3


def test_steps_caps_an_epoch_and_is_needed_for_unknown_lengths():
    ds = pipeline()
    generator = tf.data.Dataset.from_generator(
        lambda: iter(ds.as_numpy_iterator()), output_signature=ds.element_spec
    )
    with pytest.raises(ValueError, match="pass steps="):
        dataset(generator)
    m = model()
    history = m.fit(dataset(generator, steps=3), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    with pytest.raises(ValueError, match="steps must be from 1 to the source's 7 batches"):
        dataset(ds, steps=8)
    with pytest.raises(ValueError, match="state= does not apply"):
        dataset(ds, state={"version": 2, "batches": 0, "source": None})
    with pytest.raises(TypeError, match="prefetch"):
        dataset(ds, prefetch="2")


def test_the_module_example_runs():
    import doctest

    import fastbridge.keras

    result = doctest.testmod(fastbridge.keras, verbose=False)
    assert result.attempted >= 5 and result.failed == 0
