// A client for every service of kmsd (KeyManagementService, CeremonyService, AuditService): one
// call(action, request) that routes by action name (names are unique across the services). kmsctl
// uses it; the typed KmsClient (client.ts) stays the data-plane client for services and tests.

import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { serviceConstructor } from '../api/proto';
import { ClientOptions, DEFAULT_ENDPOINT, Json, KmsClientError } from './client';

export const SERVICES = ['KeyManagementService', 'CeremonyService', 'AuditService'] as const;

/* eslint-disable @typescript-eslint/no-explicit-any */
type Stub = grpc.Client & Record<string, any>;

export class KmsdClient {
  private readonly stubs: Stub[] = [];
  private readonly byAction = new Map<string, Stub>();

  constructor(private readonly opts: ClientOptions = {}) {
    const endpoint = opts.endpoint ?? process.env.KMS_ENDPOINT ?? DEFAULT_ENDPOINT;
    const caFile = opts.caFile ?? process.env.KMS_CA;
    const keyFile = opts.keyFile ?? process.env.KMS_KEY;
    const certFile = opts.certFile ?? process.env.KMS_CERT;
    const creds = caFile
      ? grpc.credentials.createSsl(fs.readFileSync(caFile), keyFile ? fs.readFileSync(keyFile) : null, certFile ? fs.readFileSync(certFile) : null)
      : grpc.credentials.createInsecure();
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
    const deadline = new Date(Date.now() + (this.opts.deadlineMs ?? 60_000));
    return new Promise<T>((resolve, reject) => {
      stub[action](request, new grpc.Metadata(), { deadline }, (err: grpc.ServiceError | null, res: T) => {
        if (!err) return resolve(res);
        const code = err.metadata?.get('kms-error-code')?.[0]?.toString() ?? grpc.status[err.code] ?? 'Unknown';
        const requestId = err.metadata?.get('kms-request-id')?.[0]?.toString();
        reject(new KmsClientError(code, err.details || err.message, err.code, requestId));
      });
    });
  }

  close(): void {
    for (const s of this.stubs) s.close();
  }
}
