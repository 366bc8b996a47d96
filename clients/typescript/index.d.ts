import type { DescMessage, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import type { ChannelCredentials, ChannelOptions, Client, Metadata } from "@grpc/grpc-js";

export * from "./gen/stablecog/v1/generation_pb.js";

/** A grpc-js client with one method per RPC of `service` (camelCase, as in `gen/`). */
export declare function gatewayClient(
  service: DescService,
  target: string,
  credentials?: ChannelCredentials,
  options?: ChannelOptions,
): Client;

/** Call one unary method; resolves with the response, rejects with the grpc-js error. */
export declare function unary<I extends DescMessage, O extends DescMessage>(
  client: Client,
  method: string,
  request: MessageInitShape<I>,
  options?: { metadata?: Metadata; deadlineSeconds?: number },
): Promise<MessageShape<O>>;

/** The gateway's error details, decoded from a grpc-js error's `grpc-status-details-bin`. */
export interface RichError {
  code: number;
  message: string;
  errorInfo?: { reason: string; domain: string; metadata: Record<string, string> };
  fieldViolations: { field: string; description: string }[];
  retryDelaySeconds?: number;
}

/** The error's google.rpc.Status details, or undefined when it carries none. */
export declare function richError(error: unknown): RichError | undefined;
