// The Alibaba Cloud KMS dialect (API version 2016-01-20). Being written; answers 501 until then.
import type { Dialect } from '../types';

export const alibabaDialect: Dialect = {
  name: 'alibaba',
  matches: (call) => call.path === '/',
  handle: async (call) => ({ status: 501, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ Code: 'NotImplemented', Message: 'not yet', RequestId: call.requestId, HostId: 'kmsd' }) }),
};
