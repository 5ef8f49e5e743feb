"""The ``tf.train.Example`` message classes without importing TensorFlow.

The store's records are serialized ``tf.train.Example`` protos.  Importing TensorFlow's
generated classes (``tensorflow.core.example.example_pb2``) imports all of TensorFlow
(~3 s and hundreds of MB per process), which the input worker processes
(:mod:`data_pipeline.batch_workers`) must not pay.  This module declares the same messages
(same field numbers and types, hence the same wire format) in a private descriptor pool of
the ``protobuf`` package, so the classes never clash with TensorFlow's if both are loaded.

Messages (as in TensorFlow's ``example.proto`` / ``feature.proto``)::

    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    Features  { map<string, Feature> feature = 1; }
    Example   { Features features = 1; }
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

__all__ = ["example_classes"]

_PACKAGE = "norton_store"


def _file_proto():
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    fp = descriptor_pb2.FileDescriptorProto(name="norton_store/example.proto", package=_PACKAGE,
                                            syntax="proto3")

    def message(name: str):
        m = fp.message_type.add()
        m.name = name
        return m

    def field(msg, name: str, number: int, ftype, *, label=F.LABEL_OPTIONAL, type_name: str = "",
              oneof: int | None = None, packed: bool = False):
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name
        if oneof is not None:
            f.oneof_index = oneof
        if packed:
            f.options.packed = True
        return f

    field(message("BytesList"), "value", 1, F.TYPE_BYTES, label=F.LABEL_REPEATED)
    field(message("FloatList"), "value", 1, F.TYPE_FLOAT, label=F.LABEL_REPEATED, packed=True)
    field(message("Int64List"), "value", 1, F.TYPE_INT64, label=F.LABEL_REPEATED, packed=True)
    feature = message("Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, kind) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                            ("int64_list", "Int64List")), start=1):
        field(feature, name, number, F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.{kind}", oneof=0)
    features = message("Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.Feature")
    field(features, "feature", 1, F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
          type_name=f".{_PACKAGE}.Features.FeatureEntry")
    field(message("Example"), "features", 1, F.TYPE_MESSAGE, type_name=f".{_PACKAGE}.Features")
    return fp


@functools.lru_cache(maxsize=1)
def example_classes() -> SimpleNamespace:
    """Message classes ``Example, Features, Feature, BytesList, FloatList, Int64List``."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_proto())
    names = ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")
    return SimpleNamespace(**{n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{n}"))
                              for n in names})
