// Optional graph inputs for onnxruntime-web. The exporter gives the text encoders' learned-token inputs
// (placeholder_ids, placeholder_embeds) an empty default as an initializer of the same name, which onnxruntime's
// Python API lets a caller override; onnxruntime-web 1.30 lists only the other inputs and refuses a feed for them
// ("invalid input 'placeholder_ids'"). Until `ralu-export --target web` writes them as plain inputs (issue 18 item
// 1), the page drops those initializers from the verified graph bytes, which makes them required inputs that it
// always feeds (zero rows when no learned token is loaded). A minimal protobuf walk: ModelProto.graph (field 7) ->
// GraphProto.initializer (field 5) -> TensorProto.name (field 8); every other byte is copied as is.

const MODEL_GRAPH = 7;
const GRAPH_INITIALIZER = 5;
const TENSOR_NAME = 8;

function readVarint(bytes, at) {
  let value = 0;
  let scale = 1;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, at];
    scale *= 128;
  }
}

function writeVarint(value) {
  const out = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    out.push(byte);
  } while (value > 0);
  return out;
}

/** The top-level fields of a message: [{field, wire, start, end, body: [start, end] for length-delimited}]. */
function fields(bytes, start = 0, end = bytes.length) {
  const out = [];
  let at = start;
  while (at < end) {
    const fieldStart = at;
    let key;
    [key, at] = readVarint(bytes, at);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    let body = null;
    if (wire === 0) [, at] = readVarint(bytes, at);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      let length;
      [length, at] = readVarint(bytes, at);
      body = [at, at + length];
      at += length;
    } else {
      throw new RangeError(`unsupported protobuf wire type ${wire}`);
    }
    out.push({ field, wire, start: fieldStart, end: at, body });
  }
  if (at !== end) throw new RangeError('protobuf message overruns its length');
  return out;
}

function tensorName(bytes, body) {
  const name = fields(bytes, body[0], body[1]).find((f) => f.field === TENSOR_NAME && f.wire === 2);
  return name ? new TextDecoder().decode(bytes.subarray(name.body[0], name.body[1])) : null;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => { out.set(p, at); return at + p.length; }, 0);
  return out;
}

/**
 * The ONNX model bytes with the initializers called `names` removed, so that the graph inputs of those names
 * become plain (required) inputs; the bytes unchanged when none is present.
 */
export function promoteInitializersToInputs(model, names) {
  const wanted = new Set(names);
  const top = fields(model);
  const graph = top.find((f) => f.field === MODEL_GRAPH && f.wire === 2);
  if (!graph || !wanted.size) return model;
  const kept = fields(model, ...graph.body).filter((f) => !(f.field === GRAPH_INITIALIZER && f.wire === 2 && wanted.has(tensorName(model, f.body))));
  const graphBody = concat(kept.map((f) => model.subarray(f.start, f.end)));
  if (graphBody.length === graph.body[1] - graph.body[0]) return model;
  return concat(top.map((f) => (f === graph
    ? concat([Uint8Array.from(writeVarint(MODEL_GRAPH * 8 + 2)), Uint8Array.from(writeVarint(graphBody.length)), graphBody])
    : model.subarray(f.start, f.end))));
}
