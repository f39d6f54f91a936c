// A client for every service of kmsd (KeyManagementService, CeremonyService, AuditService): one
// call(action, request) that routes by action name (names are unique across the services). kmsctl
// uses it; the typed KmsClient (client.ts) stays the data-plane client for services and tests.

import * as grpc from '@grpc/grpc-js';
import { serviceConstructor } from '../api/proto';
import { ClientOptions, Json, KmsClientError, channelCredentials, endpointOf, unaryCall } from './client';

export const SERVICES = ['KeyManagementService', 'CeremonyService', 'AuditService'] as const;

/* eslint-disable @typescript-eslint/no-explicit-any */
type Stub = grpc.Client & Record<string, any>;

export class KmsdClient {
  private readonly stubs: Stub[] = [];
  private readonly byAction = new Map<string, Stub>();

  constructor(private readonly opts: ClientOptions = {}) {
    const endpoint = endpointOf(opts);
    const creds = channelCredentials(opts);
    let channel: grpc.Channel | undefined;
    for (const name of SERVICES) {
      const ctor = serviceConstructor(name);
      // One channel for all three services.
      const stub = new ctor(endpoint, creds, channel ? { channelOverride: channel } : { 'grpc.max_receive_message_length': 16 * 1024 * 1024 }) as Stub;
      channel ??= stub.getChannel() as grpc.Channel;
      this.stubs.push(stub);
      for (const action of Object.keys(ctor.service)) this.byAction.set(action, stub);
    }
  }

  get actions(): string[] {
    return [...this.byAction.keys()];
  }

  call<T = Json>(action: string, request: Json = {}): Promise<T> {
    const stub = this.byAction.get(action);
    if (!stub) return Promise.reject(new KmsClientError('InvalidAction', `unknown action ${action}`, grpc.status.UNIMPLEMENTED));
    return unaryCall<T>(stub, action, request, this.opts.deadlineMs);
  }

  close(): void {
    for (const s of this.stubs) s.close();
  }
}
