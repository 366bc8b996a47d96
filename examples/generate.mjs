// Call stablecog-gateway from Node: generate images and print their URLs.
//
//   node examples/generate.mjs "a lighthouse at dawn" --seed 42
//
// Takes the same arguments as examples/generate.py: PROMPT [--seed N] [--num-outputs N]
// [--width N] [--height N] [--timeout SECONDS] [--target HOST:PORT]. The gateway is
// --target, else GATEWAY_TARGET, else 127.0.0.1:50051. Prints one URL per line, then a
// summary. On an error it prints the gRPC code and message, each field violation, the
// ErrorInfo reason and the request id (the gateway's log line for the call has the same
// `request_id`), and exits 1; a bad argument exits 2 before any call.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const DEFAULT_TARGET = "127.0.0.1:50051";
const USAGE =
  "usage: node examples/generate.mjs PROMPT [--seed N] [--num-outputs N] [--width N] " +
  "[--height N] [--timeout SECONDS] [--target HOST:PORT]";

function usageError(message) {
  console.error(`${USAGE}\ngenerate.mjs: error: ${message}`);
  process.exit(2);
}

function integer(name, value) {
  if (value === undefined) return undefined;
  if (!/^-?\d+$/.test(value)) usageError(`argument --${name}: invalid int value: '${value}'`);
  return value; // int64 fields take a string (exact); int32 fields accept it too
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      target: { type: "string" },
      seed: { type: "string" },
      "num-outputs": { type: "string" },
      width: { type: "string" },
      height: { type: "string" },
      timeout: { type: "string" },
    },
  });
} catch (err) {
  usageError(err.message);
}
const { values, positionals } = parsed;
if (positionals.length !== 1) {
  usageError(
    positionals.length === 0
      ? "the following arguments are required: prompt"
      : `unrecognized arguments: ${positionals.slice(1).join(" ")}`,
  );
}
const timeoutSeconds = values.timeout === undefined ? 300 : Number(values.timeout);
if (!(timeoutSeconds > 0)) usageError(`argument --timeout: invalid value: '${values.timeout}'`);
const target = values.target ?? (process.env.GATEWAY_TARGET || DEFAULT_TARGET);

const request = { prompt: positionals[0] };
for (const [flag, field] of [
  ["seed", "seed"],
  ["num-outputs", "num_outputs"],
  ["width", "width"],
  ["height", "height"],
]) {
  const value = integer(flag, values[flag]);
  if (value !== undefined) request[field] = value;
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const definition = protoLoader.loadSync("stablecog/v1/generation.proto", {
  includeDirs: [path.join(root, "protos"), path.join(root, "third_party/protos")],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
});
const googleRpc = protoLoader.loadSync(
  ["google/rpc/status.proto", "google/rpc/error_details.proto"],
  { includeDirs: [path.join(root, "third_party/protos")], keepCase: true },
);
const { GenerationService } = grpc.loadPackageDefinition(definition).stablecog.v1;
const client = new GenerationService(target, grpc.credentials.createInsecure());

const metadata = new grpc.Metadata();
metadata.set("x-caller", "example-client");

function printError(err) {
  console.log(`${grpc.status[err.code]}: ${err.details}`);
  const raw = err.metadata?.get("grpc-status-details-bin")?.[0];
  if (raw) {
    const pkg = grpc.loadPackageDefinition(googleRpc).google.rpc;
    const status = pkg.Status.deserialize(raw);
    for (const detail of status.details) {
      if (detail.type_url.endsWith("/google.rpc.BadRequest")) {
        for (const v of pkg.BadRequest.deserialize(detail.value).field_violations) {
          console.log(`  ${v.field}: ${v.description}`);
        }
      } else if (detail.type_url.endsWith("/google.rpc.ErrorInfo")) {
        const info = pkg.ErrorInfo.deserialize(detail.value);
        console.log(`  reason: ${info.reason} (${info.domain})`);
      }
    }
  }
  // The gateway sends the request id with the status (trailers), on failures too.
  const id = err.metadata?.get("x-request-id")?.[0];
  console.log(`  request id: ${id ?? "none (the call did not reach the gateway)"}`);
}

client.CreateGeneration(
  request,
  metadata,
  { deadline: Date.now() + timeoutSeconds * 1000 },
  (err, response) => {
    if (err) {
      printError(err);
      process.exitCode = 1;
    } else {
      for (const output of response.outputs) console.log(output.url);
      const { seed, width, height } = response.settings;
      const cache = response.cache_result.replace(/^CACHE_RESULT_/, "").toLowerCase();
      console.log(
        `seed ${seed}, ${width}x${height}, remaining credits ${response.remaining_credits}, ` +
          `cache ${cache}`,
      );
    }
    client.close();
  },
);
