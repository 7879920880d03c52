/**
 * A one-node ONNX model: com.microsoft MultiHeadAttention, f32, for cpu-peers.mjs (onnxruntime-node and
 * onnxruntime-web's WASM backend on the cpu). Protobuf pieces from onnx-gqa.mjs.
 *
 * Inputs: query (B, N, H·D), key and value (B, N, H·D) (BNHD with the heads packed, as flashattn's
 * default layout). Output: output (B, N, H·D). Attributes: num_heads, scale, unidirectional (1: causal,
 * key j visible to query i where j ≤ i; Nq = Nk here, so top-left and bottom-right alignment agree).
 */
import { FLOAT, bytes, floatAttr, intAttr, modelOf, str, valueInfo } from './onnx-gqa.mjs';

/** The model's bytes, for InferenceSession.create. */
export function mhaModel({ H, D, scale, causal }) {
  // NodeProto: input 1, output 2, name 3, op_type 4, attribute 5, domain 7.
  const node = [
    ...['query', 'key', 'value'].flatMap((s) => str(1, s)),
    ...str(2, 'output'),
    ...str(3, 'mha'),
    ...str(4, 'MultiHeadAttention'),
    ...bytes(5, intAttr('num_heads', H)),
    ...bytes(5, floatAttr('scale', scale)),
    ...bytes(5, intAttr('unidirectional', causal ? 1 : 0)),
    ...str(7, 'com.microsoft'),
  ];
  // GraphProto: node 1, name 2, input 11, output 12.
  const graph = [
    ...bytes(1, node),
    ...str(2, 'mha'),
    ...['query', 'key', 'value'].flatMap((s) => bytes(11, valueInfo(s, FLOAT, ['B', 'N', H * D]))),
    ...bytes(12, valueInfo('output', FLOAT, ['B', 'N', H * D])),
  ];
  return modelOf(graph);
}
