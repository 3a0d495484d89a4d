// Runs a retrain TensorFlow.js export in Node, as an app would load it:
//   node run_model.js FOLDER INPUT.f32 SHAPE_JSON BACKEND OUTPUT.f32
// INPUT.f32 holds little-endian float32 RGB values (0..255) of the given
// shape; OUTPUT.f32 gets the probabilities. BACKEND: cpu or wasm. Prints
// one JSON line: the backend used and the output shape.
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const wasm = require("@tensorflow/tfjs-backend-wasm");
const converter = require("@tensorflow/tfjs-converter");

function folderHandler(folder) {
  // model.json and its shards from disk (tfjs-node, which has a file
  // loader, needs a native binary; the pure packages load through this).
  const json = JSON.parse(fs.readFileSync(path.join(folder, "model.json")));
  return {
    load: async () => {
      const specs = [];
      const shards = [];
      for (const group of json.weightsManifest) {
        specs.push(...group.weights);
        for (const p of group.paths) {
          shards.push(fs.readFileSync(path.join(folder, p)));
        }
      }
      const data = Buffer.concat(shards);
      return {
        modelTopology: json.modelTopology, format: json.format,
        generatedBy: json.generatedBy, convertedBy: json.convertedBy,
        signature: json.signature,
        userDefinedMetadata: json.userDefinedMetadata, weightSpecs: specs,
        weightData: data.buffer.slice(data.byteOffset,
                                      data.byteOffset + data.byteLength),
      };
    },
  };
}

async function main() {
  const [folder, input, shapeJson, backend, output] = process.argv.slice(2);
  if (backend === "wasm") {
    const dist = path.dirname(require.resolve("@tensorflow/tfjs-backend-wasm"));
    wasm.setWasmPaths(dist + path.sep);
  }
  if (!(await tf.setBackend(backend))) {
    throw new Error(`backend ${backend} did not start`);
  }
  await tf.ready();
  const model = await converter.loadGraphModel(folderHandler(folder));
  const bytes = fs.readFileSync(input);
  const x = tf.tensor(new Float32Array(bytes.buffer.slice(
      bytes.byteOffset, bytes.byteOffset + bytes.byteLength)),
      JSON.parse(shapeJson), "float32");
  const y = model.predict(x);
  const values = await y.data();
  fs.writeFileSync(output, Buffer.from(values.buffer));
  console.log(JSON.stringify({backend: tf.getBackend(), shape: y.shape,
                              labels: model.metadata.labels}));
}

main().catch((e) => {
  console.error((e && e.stack) || String(e));
  process.exit(1);
});
