// Validate one glTF/GLB file with the Khronos glTF validator; print its JSON report on stdout.
// Usage: node validate.js FILE   (exit 0 when the report was produced, 2 on usage or I/O errors)
"use strict";
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.js FILE.glb|FILE.gltf");
  process.exit(2);
}
const folder = path.dirname(path.resolve(file));
const externalResourceFunction = (uri) =>
  new Promise((resolve, reject) => {
    fs.readFile(path.join(folder, decodeURIComponent(uri)), (error, data) =>
      error ? reject(error.toString()) : resolve(new Uint8Array(data)));
  });

let bytes;
try {
  bytes = new Uint8Array(fs.readFileSync(file));
} catch (error) {
  console.error(`cannot read ${file}: ${error.message}`);
  process.exit(2);
}
validator
  .validateBytes(bytes, {
    uri: path.basename(file),
    externalResourceFunction,
    maxIssues: 100,
  })
  .then((report) => console.log(JSON.stringify(report, null, 2)))
  .catch((error) => {
    console.error(String(error));
    process.exit(2);
  });
