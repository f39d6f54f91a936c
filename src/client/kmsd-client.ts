// A client for every service of kmsd (KeyManagementService, CeremonyService, AuditService): one
// call(action, request) that routes by action name (names are unique across the services). kmsctl
// uses it; the typed KmsClient (client.ts) stays the data-plane client for services and tests.

import * as grpc from '@grpc/grpc-js';
import { serviceConstructor } from '../api/proto';
import { CHANNEL_OPTIONS, ClientOptions, Json, KmsClientError, channelCredentials, endpointsOf, unaryCall } from './client';
import { EndpointRing } from './endpoints';

export const SERVICES = ['KeyManagementService', 'CeremonyService', 'AuditService'] as const;

/* eslint-disable @typescript-eslint/no-explicit-any */
type Stub = grpc.Client & Record<string, any>;

/** The three services' stubs on one endpoint, sharing one channel. */
type Stubs = Map<string, Stub>;

export class KmsdClient {
  private readonly ring: EndpointRing<Stubs>;
  private readonly serviceOf = new Map<string, string>();
  readonly endpoints: string[];

  /** Several endpoints: round robin and retries as KmsClient (src/client/endpoints.ts). */
  constructor(private readonly opts: ClientOptions = {}) {
    this.endpoints = endpointsOf(opts);
    const creds = channelCredentials(opts);
    for (const name of SERVICES) for (const action of Object.keys(serviceConstructor(name).service)) this.serviceOf.set(action, name);
    this.ring = new EndpointRing(
      this.endpoints,
      (endpoint) => {
        const stubs: Stubs = new Map();
        let channel: grpc.Channel | undefined;
        for (const name of SERVICES) {
          const ctor = serviceConstructor(name);
          const stub = new ctor(endpoint, creds, channel ? { channelOverride: channel } : CHANNEL_OPTIONS) as Stub;
          channel ??= stub.getChannel() as grpc.Channel;
          stubs.set(name, stub);
        }
        return stubs;
      },
      opts.endpointBackoffMs,
    );
  }

  get actions(): string[] {
    return [...this.serviceOf.keys()];
  }

  call<T = Json>(action: string, request: Json = {}): Promise<T> {
    const service = this.serviceOf.get(action);
    if (!service) return Promise.reject(new KmsClientError('InvalidAction', `unknown action ${action}`, grpc.status.UNIMPLEMENTED));
    // One deadline for the call, retries on other endpoints included.
    const end = Date.now() + (this.opts.deadlineMs ?? 60_000);
    return this.ring.route(action, (i) => unaryCall<T>(this.ring.conn(i).get(service)!, action, request, Math.max(1, end - Date.now())));
  }

  close(): void {
    for (const stubs of this.ring.opened()) for (const s of stubs.values()) s.close();
  }
}
