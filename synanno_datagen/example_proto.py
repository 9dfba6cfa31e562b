"""tf.train.Example's messages, for reading and writing records without TensorFlow.

The protobuf wire format carries field numbers, not message names, so messages with TensorFlow's
fields (tensorflow/core/example/{example,feature}.proto) read and write exactly TensorFlow's
bytes. They are declared here under their own proto package, ``synanno_datagen.example``: two
definitions of ``tensorflow.Example`` cannot share a process's descriptor pool, so the classes
another package bundles under TensorFlow's names fail to load beside TensorFlow (and the other
way round); these load beside either.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

PACKAGE = "synanno_datagen.example"


@functools.lru_cache(maxsize=None)
def messages() -> SimpleNamespace:
    """The message classes: Example, Features, Feature, BytesList, FloatList, Int64List."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="synanno_datagen/example.proto",
                                               package=PACKAGE, syntax="proto3")

    def message(name, *fields, options=None):
        m = proto.message_type.add(name=name)
        if options is not None:
            m.options.CopyFrom(options)
        for number, (field, kind, label, type_name, oneof) in enumerate(fields, start=1):
            f = m.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".{PACKAGE}.{type_name}"
            if oneof is not None:
                f.oneof_index = oneof
        return m

    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", F.TYPE_BYTES, repeated, None, None))
    packed = message("FloatList", ("value", F.TYPE_FLOAT, repeated, None, None))
    packed.field[0].options.packed = True
    packed = message("Int64List", ("value", F.TYPE_INT64, repeated, None, None))
    packed.field[0].options.packed = True
    feature = message("Feature", ("bytes_list", F.TYPE_MESSAGE, optional, "BytesList", 0),
                      ("float_list", F.TYPE_MESSAGE, optional, "FloatList", 0),
                      ("int64_list", F.TYPE_MESSAGE, optional, "Int64List", 0))
    feature.oneof_decl.add(name="kind")
    features = message("Features", ("feature", F.TYPE_MESSAGE, repeated,
                                    "Features.FeatureEntry", None))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=optional,
                    type_name=f".{PACKAGE}.Feature")
    message("Example", ("features", F.TYPE_MESSAGE, optional, "Features", None))

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")
    classes = message_factory.GetMessages([proto], pool=pool)
    return SimpleNamespace(**{n: classes[f"{PACKAGE}.{n}"] for n in names})
