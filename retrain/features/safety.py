"""Ops a pretrained graph must not contain unless the user trusts it.

A GraphDef is a program: besides maths it can read and write files, run
Python, or talk to other processes. A feature extractor needs none of that,
so a graph holding any of these ops is refused unless
--allow_unsafe_graph_ops is given. This list is the one place they are named.
"""

from typing import FrozenSet, List

import tensorflow as tf

UNSAFE_OPS: FrozenSet[str] = frozenset({
    # Read or write files.
    "ReadFile", "WriteFile", "MatchingFiles", "DeleteFile", "ImmutableConst",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "LoadAndRemapMatrix",
    # Checkpoints.
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
    "MergeV2Checkpoints",
    # Readers and file datasets.
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader",
    "TextLineReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "TFRecordReader", "TFRecordReaderV2",
    "LMDBReader", "TextLineDataset", "TFRecordDataset", "TFRecordDatasetV2",
    "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "MatchingFilesDataset", "CSVDataset", "CSVDatasetV2",
    "ExperimentalCSVDataset", "LMDBDataset", "ExperimentalLMDBDataset",
    "SnapshotDataset", "SnapshotDatasetV2", "SaveDataset", "SaveDatasetV2",
    "LoadDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    # Run Python code.
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    # Write summaries, debug dumps or prints (which can target files).
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary",
    "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary",
    "WriteAudioSummary", "WriteGraphSummary", "WriteRawProtoSummary",
    "ImportEvent", "FlushSummaryWriter", "Print", "PrintV2",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount",
    "DebugNumericSummary", "DebugNumericSummaryV2",
    # Reach other processes or devices.
    "RemoteCall", "_Send", "_Recv", "_HostSend", "_HostRecv",
    # Protocol buffer ops can load descriptors from files.
    "DecodeProtoV2", "EncodeProto",
})


def find_unsafe_ops(graph_def: tf.compat.v1.GraphDef) -> List[str]:
  """Sorted names of unsafe op types in the graph and its function library."""
  ops = {n.op for n in graph_def.node}
  for function in graph_def.library.function:
    ops |= {n.op for n in function.node_def}
  return sorted(ops & UNSAFE_OPS)
