// Call stablecog-gateway from Node: node examples/generate.mjs "a lighthouse at dawn" [seed]
// Prints one output URL per line; on an error, the code and each field violation.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const target = process.env.GATEWAY_TARGET ?? "127.0.0.1:50051";
const [prompt = "a lighthouse at dawn", seed] = process.argv.slice(2);

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

const request = { prompt };
if (seed !== undefined) request.seed = seed;
const metadata = new grpc.Metadata();
metadata.set("x-caller", "node-example");

client.CreateGeneration(request, metadata, { deadline: Date.now() + 300_000 }, (err, response) => {
  if (err) {
    console.log(`${grpc.status[err.code]}: ${err.details}`);
    const raw = err.metadata?.get("grpc-status-details-bin")?.[0];
    if (raw) {
      const pkg = grpc.loadPackageDefinition(googleRpc).google.rpc;
      const status = pkg.Status.deserialize(raw);
      for (const detail of status.details) {
        if (detail.type_url.endsWith("google.rpc.BadRequest")) {
          for (const v of pkg.BadRequest.deserialize(detail.value).field_violations) {
            console.log(`  ${v.field}: ${v.description}`);
          }
        }
      }
    }
    process.exitCode = 1;
  } else {
    for (const output of response.outputs) console.log(output.url);
    console.log(`seed ${response.settings.seed}, cache ${response.cache_result}`);
  }
  client.close();
});
