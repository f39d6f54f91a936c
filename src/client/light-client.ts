// kmsctl's client: every action of every service through one generic gRPC channel, with messages
// encoded by protobufjs/light from the precompiled descriptor (src/client/descriptor.ts). It converts
// exactly as the proto-loader stubs of KmsClient and KmsdClient do (same fromObject/toObject calls,
// same options), but starts without parsing the .proto files or building their descriptors, which
// was most of kmsctl's start-up time.

import * as grpc from '@grpc/grpc-js';
import * as protobuf from 'protobufjs/light';
import { ClientOptions, Json, KmsClientError, channelCredentials, endpointOf, toClientError } from './basics';
import { SERVICE_NAMES, descriptorSubset, serviceMethods, serviceOf } from './descriptor';

/** src/api/proto.ts's LOADER_OPTIONS for decoding (keepCase is in the descriptor itself). */
const TO_OBJECT: protobuf.IConversionOptions = { longs: Number, enums: String, defaults: true, oneofs: true };

export class LightClient {
  private readonly client: grpc.Client;
  /** Per action: a root holding only the types that action's messages use. */
  private readonly roots = new Map<string, protobuf.Root>();

  constructor(private readonly opts: ClientOptions = {}) {
    this.client = new grpc.Client(endpointOf(opts), channelCredentials(opts), { 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  }

  get actions(): string[] {
    return SERVICE_NAMES.flatMap((s) => Object.keys(serviceMethods(s)));
  }

  call<T = Json>(action: string, request: Json = {}): Promise<T> {
    const service = serviceOf(action);
    const method = service ? serviceMethods(service)[action] : undefined;
    if (!service || !method) return Promise.reject(new KmsClientError('InvalidAction', `unknown action ${action}`, grpc.status.UNIMPLEMENTED));
    if (method.requestStream || method.responseStream) return Promise.reject(new KmsClientError('InvalidAction', `${action} is a stream`, grpc.status.UNIMPLEMENTED));
    let root = this.roots.get(action);
    if (!root) {
      root = protobuf.Root.fromJSON(descriptorSubset([method.requestType, method.responseType]) as protobuf.INamespace);
      this.roots.set(action, root);
    }
    const req = root.lookupType(`kms.v1.${method.requestType}`);
    const res = root.lookupType(`kms.v1.${method.responseType}`);
    const deadline = new Date(Date.now() + (this.opts.deadlineMs ?? 60_000));
    return new Promise<T>((resolve, reject) => {
      this.client.makeUnaryRequest(
        `/kms.v1.${service}/${action}`,
        (arg: Json) => Buffer.from(req.encode(req.fromObject(arg)).finish()),
        (buf: Buffer) => res.toObject(res.decode(buf), TO_OBJECT) as T,
        request,
        new grpc.Metadata(),
        { deadline },
        (err: grpc.ServiceError | null, value?: T) => (err ? reject(toClientError(err)) : resolve(value as T)),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}
