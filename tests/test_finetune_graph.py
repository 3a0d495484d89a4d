"""Choosing the trainable top of a frozen CNN, and its variables."""

import numpy as np
import pytest
import tensorflow as tf

from retrain.errors import UserError
from retrain.features import cut as cuts
from retrain.training import top as tops

tf1 = tf.compat.v1


def _const(rng, shape, name):
  return tf.constant(rng.normal(size=shape).astype(np.float32) * 0.3,
                     name=name)


def _chain_graph():
  """input -> conv1 + BiasAdd -> relu -> depthwise -> FusedBatchNorm -> relu
  -> conv3 -> BatchNorm as Mul/Add (slim) -> relu -> mean pool."""
  rng = np.random.default_rng(0)
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
    c1 = tf.nn.conv2d(x, _const(rng, [3, 3, 3, 4], "w1"), 1, "SAME",
                      name="conv1")
    r1 = tf.nn.relu(tf.nn.bias_add(c1, _const(rng, [4], "b1")), name="r1")
    d2 = tf.nn.depthwise_conv2d(r1, _const(rng, [3, 3, 4, 1], "w2"),
                                [1, 1, 1, 1], "SAME", name="dw2")
    bn2, _, _ = tf1.nn.fused_batch_norm(
        d2, _const(rng, [4], "gamma2") + 1, _const(rng, [4], "beta2"),
        mean=_const(rng, [4], "mean2"),
        variance=tf.abs(_const(rng, [4], "var2")) + 1, is_training=False,
        name="bn2")
    r2 = tf.nn.relu(bn2, name="r2")
    c3 = tf.nn.conv2d(r2, _const(rng, [1, 1, 4, 6], "w3"), 1, "SAME",
                      name="conv3")
    scale = tf.identity(_const(rng, [6], "gamma3") + 1, name="scale3")
    folded = tf.add(tf.multiply(c3, scale, name="bn3_mul"),
                    tf.subtract(_const(rng, [6], "beta3"),
                                _const(rng, [6], "mean3") * scale,
                                name="bn3_offset"), name="bn3_add")
    r3 = tf.nn.relu(folded, name="r3")
    tf.reduce_mean(r3, [1, 2], name="pool")
  return g.as_graph_def()


def _branch_graph():
  """input -> conv1 -> relu -> (conv2 | conv3) -> concat -> mean pool."""
  rng = np.random.default_rng(1)
  g = tf.Graph()
  with g.as_default():
    x = tf1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
    a = tf.nn.relu(tf.nn.conv2d(x, _const(rng, [3, 3, 3, 4], "w1"), 1,
                                "SAME"), name="a")
    b1 = tf.nn.conv2d(a, _const(rng, [1, 1, 4, 2], "w2"), 1, "SAME",
                      name="branch1")
    b2 = tf.nn.conv2d(a, _const(rng, [3, 3, 4, 2], "w3"), 1, "SAME",
                      name="branch2")
    cat = tf.concat([b1, b2], 3, name="cat")
    tf.reduce_mean(cat, [1, 2], name="pool")
  return g.as_graph_def()


def test_layers_by_count_with_and_without_batch_norm():
  gd = _chain_graph()
  layers = cuts.weight_layers(gd, "pool:0")
  assert [l.op for l in layers] == ["conv1", "dw2", "conv3"]
  assert [l.bias for l in layers] == ["b1:0", "beta2:0", "bn3_offset:0"]
  one = cuts.choose_cut(gd, "pool:0", layers=1)
  assert one.inputs == ("r2:0",) and [l.op for l in one.layers] == ["conv3"]
  two = cuts.choose_cut(gd, "pool:0", layers=2)
  assert two.inputs == ("r1:0",)
  # The kernels and the BatchNorm offset train; scale and statistics do not.
  assert two.trainable() == ["w2:0", "beta2:0", "w3:0", "bn3_offset:0"]
  three = cuts.choose_cut(gd, "pool:0", layers=3)
  assert three.inputs == ("input:0",) and len(three.layers) == 3
  with pytest.raises(UserError, match="has 3 weight layers"):
    cuts.choose_cut(gd, "pool:0", layers=4)


def test_layers_by_tensor():
  gd = _chain_graph()
  assert cuts.choose_cut(gd, "pool:0", from_tensor="r1:0") == cuts.choose_cut(
      gd, "pool:0", layers=2)
  # A cut in the middle of a layer: the conv below it is not trainable,
  # its BatchNorm offset is not either (nothing trainable feeds it).
  mid = cuts.choose_cut(gd, "pool:0", from_tensor="dw2:0")
  assert [l.op for l in mid.layers] == ["conv3"] and mid.inputs == ("dw2:0",)
  for bad in ("pool:0", "w3:0", "nowhere:0"):
    with pytest.raises(UserError, match="candidates.*r2:0"):
      cuts.choose_cut(gd, "pool:0", from_tensor=bad)


def test_parallel_branches_cache_every_tensor_that_crosses():
  gd = _branch_graph()
  layers = cuts.weight_layers(gd, "pool:0")
  assert len(layers) == 3
  cut = cuts.choose_cut(gd, "pool:0", layers=1)
  last = cut.layers[0].op
  other = {"branch1": "branch2:0", "branch2": "branch1:0"}[last]
  # The chosen branch's input and the other branch's output both cross.
  assert set(cut.inputs) == {"a:0", other}
  both = cuts.choose_cut(gd, "pool:0", layers=2)
  assert both.inputs == ("a:0",)


@pytest.mark.parametrize("make,count", [(_chain_graph, 1), (_chain_graph, 2),
                                        (_chain_graph, 3), (_branch_graph, 1)])
def test_trainable_top_gives_the_frozen_models_outputs(make, count):
  gd = make()
  cut = cuts.choose_cut(gd, "pool:0", layers=count)
  rng = np.random.default_rng(2)
  images = rng.uniform(-1, 1, [5, 8, 8, 3]).astype(np.float32)
  frozen = tf.Graph()
  with frozen.as_default():
    outs = tf1.import_graph_def(gd, return_elements=["pool:0",
                                                     *cut.inputs], name="")
  with tf1.Session(graph=frozen) as sess:
    want, *activations = sess.run(outs, {"input:0": images})
  shapes = cuts.cut_shapes(gd, "input:0", (8, 8), cut)
  assert all(s[0] is None for s in shapes.values())
  graph = tf.Graph()
  with graph.as_default():
    top = tops.build_trainable_top(gd, cut, shapes)
    init = tf1.global_variables_initializer()
    assert sorted(top.variables) == sorted(cut.trainable())
    assert {v.name.split(":")[0] for v in tf1.trainable_variables()} == {
        v.op.name for v in top.variables.values()}
  with tf1.Session(graph=graph) as sess:
    sess.run(init)
    got = sess.run(top.bottleneck, dict(zip(
        [top.inputs[t] for t in cut.inputs], activations)))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_real_mobilenet_top_block(shared):
  """MobileNet v1's last depthwise-separable block: one tensor crosses."""
  import os
  path = os.path.join(shared, "models", "mobilenet_v1_025_128",
                      "frozen_graph.pb")
  gd = tf1.GraphDef.FromString(open(path, "rb").read())
  bottleneck = "MobilenetV1/Logits/AvgPool_1a/AvgPool:0"
  cut = cuts.choose_cut(gd, bottleneck, layers=2)
  assert [l.op.split("/")[-2] for l in cut.layers] == [
      "Conv2d_13_depthwise", "Conv2d_13_pointwise"]
  assert cut.inputs == ("MobilenetV1/MobilenetV1/Conv2d_12_pointwise/Relu6:0",)
  assert all(l.bias and l.bias.endswith("batchnorm/sub:0")
             for l in cut.layers)
  shapes = cuts.cut_shapes(gd, "input:0", (128, 128), cut)
  assert shapes[cut.inputs[0]] == [None, 4, 4, 256]


def test_real_efficientnet_residual_cut_gives_the_same_features(shared):
  """EfficientNet-Lite0: a cut inside an MBConv block with a residual is two
  tensors (the block's activation and the skip); the top with variables
  computes the frozen model's features."""
  import os
  path = os.path.join(shared, "models", "efficientnet_lite0",
                      "frozen_graph.pb")
  gd = tf1.GraphDef.FromString(open(path, "rb").read())
  cut = cuts.choose_cut(gd, "feature_vector:0", layers=5)
  assert len(cut.inputs) == 2 and len(cut.layers) == 5
  shapes = cuts.cut_shapes(gd, "input:0", (224, 224), cut)
  images = np.random.default_rng(3).uniform(-1, 1, [2, 224, 224, 3])
  frozen = tf.Graph()
  with frozen.as_default():
    x = tf1.placeholder(tf.float32, [None, 224, 224, 3])
    outs = tf1.import_graph_def(gd, input_map={"input:0": x}, return_elements=[
        "feature_vector:0", *cut.inputs], name="")
  with tf1.Session(graph=frozen) as sess:
    want, *activations = sess.run(outs, {x: images})
  graph = tf.Graph()
  with graph.as_default():
    top = tops.build_trainable_top(gd, cut, shapes)
    init = tf1.global_variables_initializer()
  with tf1.Session(graph=graph) as sess:
    sess.run(init)
    got = sess.run(top.bottleneck, dict(zip(
        [top.inputs[t] for t in cut.inputs], activations)))
  np.testing.assert_allclose(got, want.reshape(got.shape), atol=1e-5)


def test_cut_vectors_hold_exactly_the_crossing_tensors():
  gd = _branch_graph()
  cut = cuts.choose_cut(gd, "pool:0", layers=1)
  shapes = cuts.cut_shapes(gd, "input:0", (8, 8), cut)
  vector_gd, size = cuts.cut_vector_graph(gd, "input:0", (8, 8), cut)
  assert size == sum(int(np.prod(shapes[t][1:])) for t in cut.inputs)
  images = np.random.default_rng(4).uniform(-1, 1, [3, 8, 8, 3])
  frozen = tf.Graph()
  with frozen.as_default():
    want = tf1.import_graph_def(gd, return_elements=list(cut.inputs),
                                name="")
  with tf1.Session(graph=frozen) as sess:
    want = sess.run(want, {"input:0": images})
  graph = tf.Graph()
  with graph.as_default():
    vectors, = tf1.import_graph_def(vector_gd, return_elements=[
        cuts.CUT_OUTPUT + ":0"], name="")
    parts = tops.split_cut_vector(vectors, cut, shapes)
  with tf1.Session(graph=graph) as sess:
    got = sess.run([parts[t] for t in cut.inputs],
                   {cuts.CUT_INPUT + ":0": images})
  for g_, w in zip(got, want):
    np.testing.assert_array_equal(g_, w)


def test_trained_values_go_back_into_the_frozen_graph():
  """frozen_with_values: unchanged values, the same model; changed values
  (as training leaves them), the variable top's outputs."""
  gd = _chain_graph()
  cut = cuts.choose_cut(gd, "pool:0", layers=2)
  images = np.random.default_rng(5).uniform(-1, 1, [4, 8, 8, 3])

  def features(graph_def):
    g = tf.Graph()
    with g.as_default():
      out, = tf1.import_graph_def(graph_def, return_elements=["pool:0"],
                                  name="")
    with tf1.Session(graph=g) as sess:
      return sess.run(out, {"input:0": images})
  values = tops.constant_values(gd, cut.trainable())
  np.testing.assert_allclose(features(tops.frozen_with_values(gd, values)),
                             features(gd), atol=1e-6)
  shapes = cuts.cut_shapes(gd, "input:0", (8, 8), cut)
  graph = tf.Graph()
  with graph.as_default():
    top = tops.build_trainable_top(gd, cut, shapes)
    nudge = tf.group(*[v.assign_add(0.1 * tf.ones_like(v))
                       for v in top.variables.values()])
    init = tf1.global_variables_initializer()
    stem = tf1.import_graph_def(gd, return_elements=list(cut.inputs),
                                name="stem")
  with tf1.Session(graph=graph) as sess:
    sess.run(init)
    sess.run(nudge)
    activations = sess.run(stem, {"stem/input:0": images})
    trained = sess.run(top.bottleneck, dict(zip(
        [top.inputs[t] for t in cut.inputs], activations)))
    new_values = sess.run({t: v for t, v in top.variables.items()})
  exported = features(tops.frozen_with_values(gd, new_values))
  assert np.abs(exported - features(gd)).max() > 1e-3  # Values changed.
  np.testing.assert_allclose(exported, trained, atol=1e-5)
  with pytest.raises(ValueError):
    tops.frozen_with_values(gd, {"bn2:1": np.zeros(4)})


def test_cut_activations_are_cached_like_bottlenecks(small_models,
                                                     color_images, tmp_path):
  """The bottleneck cache computes and reads back cut vectors: their own
  model tag (another cut, another tag), a warm fill computes nothing, and
  the vectors are the frozen model's activations at the cut."""
  import os
  import cache
  from retrain.config import ModelOptions
  from retrain.features import model
  from retrain.features.extract import BottleneckExtractor, ImageDecoder
  fx = model.load_feature_extractor(
      ModelOptions(graph=small_models["inception"], tfhub_module=""))
  cut = cuts.choose_cut(fx.graph_def, fx.bottleneck_tensor, layers=1)
  cfx = cuts.cut_feature_extractor(fx, cut)
  other = cuts.cut_feature_extractor(
      fx, cuts.choose_cut(fx.graph_def, fx.bottleneck_tensor,
                          from_tensor="Mul:0"))
  assert len({fx.tag, cfx.tag, other.tag}) == 3
  refs = []
  for root, _, files in os.walk(color_images):
    for f in sorted(files)[:4]:
      refs.append(cache.ImageRef(os.path.join(root, f),
                                 os.path.basename(root), f))
  store = cache.BottleneckCache(str(tmp_path / "bn"), cfx.tag)

  def compute(missing):
    extractor = BottleneckExtractor(cfx, batch_size=4)
    try:
      yield from extractor.compute(missing)
    finally:
      extractor.close()
  first = store.fill(refs, compute, cfx.bottleneck_size)
  assert first.computed == len(refs) and first.ok.all()
  again = store.fill(refs, compute, cfx.bottleneck_size)
  assert again.computed == 0 and again.from_cache == len(refs)
  decoder = ImageDecoder(fx.input_size, rule=fx.preprocessing)
  pixels = np.stack([decoder.decode(r.path)[0] for r in refs])
  decoder.close()
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, *fx.input_size, 3])
    scaled = (x - fx.input_mean) * (1.0 / fx.input_std)
    want, = tf1.import_graph_def(fx.graph_def, input_map={
        fx.input_tensor: scaled}, return_elements=list(cut.inputs), name="")
  with tf1.Session(graph=graph) as sess:
    want = sess.run(want, {x: pixels})
  np.testing.assert_allclose(np.asarray(again.vectors)[:len(refs)],
                             want.reshape(len(refs), -1), atol=1e-5)
