/**
 * A one-node ONNX model: com.microsoft GroupQueryAttention, f16, for onnxruntime-decode.mjs. Written with
 * a few lines of protobuf encoding (the ONNX schema's field numbers) instead of a dependency: the graph is
 * one node, its inputs and outputs. onnx-mha.mjs builds its MultiHeadAttention model from the same pieces.
 *
 * Inputs: query (B, S, H·D), key and value (B, S, Hkv·D) (the S new tokens), past_key and past_value
 * (B, Hkv, P, D), seqlens_k (B) int32 (total length − 1), total_sequence_length () int32. Outputs:
 * output (B, S, H·D), present_key and present_value (B, Hkv, T, D). Attributes: num_heads, kv_num_heads,
 * scale. Opsets: ai.onnx 21, com.microsoft 1.
 */

/** Protobuf wire types. */
const VARINT = 0;
const LEN = 2;
const I32 = 5;

function varint(n) {
  const out = [];
  let x = BigInt(n);
  if (x < 0n) x += 1n << 64n; // int64 as two's complement
  do {
    let byte = Number(x & 0x7fn);
    x >>= 7n;
    if (x !== 0n) byte |= 0x80;
    out.push(byte);
  } while (x !== 0n);
  return out;
}

const tag = (field, wire) => varint((field << 3) | wire);
export const int = (field, n) => [...tag(field, VARINT), ...varint(n)];
export const bytes = (field, b) => [...tag(field, LEN), ...varint(b.length), ...b];
export const str = (field, s) => bytes(field, [...new TextEncoder().encode(s)]);
const float = (field, x) => [...tag(field, I32), ...new Uint8Array(Float32Array.of(x).buffer)];

/** ONNX TensorProto.DataType */
export const FLOAT16 = 10;
export const INT32 = 6;
export const FLOAT = 1;

// AttributeProto: name 1, f 2, i 3, type 20 (FLOAT 1, INT 2).
export const intAttr = (name, i) => [...str(1, name), ...int(3, i), ...int(20, 2)];
export const floatAttr = (name, f) => [...str(1, name), ...float(2, f), ...int(20, 1)];

// ValueInfoProto: name 1, type 2; TypeProto: tensor_type 1; Tensor: elem_type 1, shape 2;
// TensorShapeProto: dim 1; Dimension: dim_value 1, dim_param 2.
export function valueInfo(name, elemType, dims) {
  const shape = dims.flatMap((d) => bytes(1, typeof d === 'string' ? str(2, d) : int(1, d)));
  return [...str(1, name), ...bytes(2, bytes(1, [...int(1, elemType), ...bytes(2, shape)]))];
}

/** The model's bytes, for InferenceSession.create. */
export function gqaModel({ H, Hkv, D, scale }) {
  const inputs = ['query', 'key', 'value', 'past_key', 'past_value', 'seqlens_k', 'total_sequence_length'];
  const outputs = ['output', 'present_key', 'present_value'];
  // NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7.
  const node = [
    ...inputs.flatMap((s) => str(1, s)),
    ...outputs.flatMap((s) => str(2, s)),
    ...str(3, 'gqa'),
    ...str(4, 'GroupQueryAttention'),
    ...bytes(5, intAttr('num_heads', H)),
    ...bytes(5, intAttr('kv_num_heads', Hkv)),
    ...bytes(5, floatAttr('scale', scale)),
    ...str(7, 'com.microsoft'),
  ];
  // GraphProto: node 1, name 2, input 11, output 12.
  const graph = [
    ...bytes(1, node),
    ...str(2, 'gqa'),
    ...bytes(11, valueInfo('query', FLOAT16, ['B', 'S', H * D])),
    ...bytes(11, valueInfo('key', FLOAT16, ['B', 'S', Hkv * D])),
    ...bytes(11, valueInfo('value', FLOAT16, ['B', 'S', Hkv * D])),
    ...bytes(11, valueInfo('past_key', FLOAT16, ['B', Hkv, 'P', D])),
    ...bytes(11, valueInfo('past_value', FLOAT16, ['B', Hkv, 'P', D])),
    ...bytes(11, valueInfo('seqlens_k', INT32, ['B'])),
    ...bytes(11, valueInfo('total_sequence_length', INT32, [])),
    ...bytes(12, valueInfo('output', FLOAT16, ['B', 'S', H * D])),
    ...bytes(12, valueInfo('present_key', FLOAT16, ['B', Hkv, 'T', D])),
    ...bytes(12, valueInfo('present_value', FLOAT16, ['B', Hkv, 'T', D])),
  ];
  return modelOf(graph);
}

/** A ModelProto's bytes around a graph's: ai.onnx opset 21, com.microsoft 1. */
export function modelOf(graph) {
  // ModelProto: ir_version 1, producer_name 2, graph 7, opset_import 8 (OperatorSetIdProto: domain 1, version 2).
  const model = [
    ...int(1, 10),
    ...str(2, 'flashattn-bench'),
    ...bytes(7, graph),
    ...bytes(8, [...str(1, ''), ...int(2, 21)]),
    ...bytes(8, [...str(1, 'com.microsoft'), ...int(2, 1)]),
  ];
  return Uint8Array.from(model);
}
