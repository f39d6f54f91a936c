// The standard gRPC health service of a kmsd on loopback, as a load balancer asks it.

import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ROOT } from './daemon';

/** SERVING or NOT_SERVING for `service` ('' for the whole server); rejects when the call fails. */
export function healthOf(port: number, service = ''): Promise<string> {
  const def = protoLoader.loadSync(path.join(ROOT, 'node_modules', 'grpc-health-check', 'proto', 'health', 'v1', 'health.proto'), { keepCase: true, enums: String, defaults: true });
  const Health = (grpc.loadPackageDefinition(def) as any).grpc.health.v1.Health as grpc.ServiceClientConstructor; // eslint-disable-line @typescript-eslint/no-explicit-any
  const client = new Health(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as any; // eslint-disable-line @typescript-eslint/no-explicit-any
  return new Promise<string>((resolve, reject) =>
    client.Check({ service }, { deadline: Date.now() + 5000 }, (err: grpc.ServiceError | null, res: { status: string }) => {
      client.close();
      if (err) reject(err);
      else resolve(res.status);
    }),
  );
}
