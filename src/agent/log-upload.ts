import { createHash, randomUUID } from 'node:crypto';
import https from 'node:https';
import { isIP } from 'node:net';
import { rootCertificates } from 'node:tls';
import type { ParentRegistryLogin } from './ports.ts';

/**
 * `UploadModuleLogs` as IoT Edge's agent does it: answered at once with a correlation id, the
 * upload done in the background, its state read with `GetTaskStatus`. Each module's logs become
 * one block blob in the container the request's `sasUrl` names, called
 * `{hub}/{device}/{module}-{UTC time}.{log|json}[.gz]` after IoT Edge's pattern.
 *
 * In a hierarchy the `sasUrl` names `https://$upstream/storage/CONTAINER` (or the parent's host
 * name): the blob goes to the parent's `/storage/`, which passes it up to the top layer's
 * `[blob] dir`, signed in as this edge device (as for images) and checked against the trust
 * bundle. Any other `sasUrl` (a storage account the device reaches) is used as it is, its SAS in
 * the query.
 */

export type TaskStatus = 'NotStarted' | 'Running' | 'Completed' | 'Failed' | 'Unknown';

export class UploadTasks {
  private readonly tasks = new Map<string, { status: TaskStatus; message: string; at: number }>();

  /** Runs `work` in the background; returns its correlation id. */
  start(work: () => Promise<void>): string {
    const id = randomUUID();
    this.tasks.set(id, { status: 'Running', message: '', at: Date.now() });
    // Forget tasks after an hour, so the map stays small.
    for (const [k, t] of this.tasks) if (Date.now() - t.at > 3_600_000) this.tasks.delete(k);
    work().then(
      () => this.tasks.set(id, { status: 'Completed', message: '', at: Date.now() }),
      (err: unknown) => this.tasks.set(id, { status: 'Failed', message: (err as Error).message, at: Date.now() }),
    );
    return id;
  }

  status(id: string): { status: TaskStatus; message: string } {
    const t = this.tasks.get(id);
    return t
      ? { status: t.status, message: t.message }
      : { status: 'Unknown', message: `no task with correlationId ${id}` };
  }
}

export type BlobUploader = (sasUrl: string, blobName: string, body: Buffer, contentType: string) => Promise<void>;

/** `sasUrl` + blob name: where the PUT goes and whether it signs in as the device. */
export function uploadTarget(
  sasUrl: string,
  blobName: string,
  parentHostname: string | undefined,
): { url: URL; viaParent: boolean } {
  let url: URL;
  try {
    url = new URL(sasUrl);
  } catch {
    throw new Error(`sasUrl ${JSON.stringify(sasUrl)} is not a URL`);
  }
  if (url.protocol !== 'https:') throw new Error('sasUrl must be an https:// URL');
  const host = url.hostname.toLowerCase();
  const viaParent = host === '$upstream' || (parentHostname !== undefined && host === parentHostname.toLowerCase());
  if (viaParent) {
    if (!parentHostname) throw new Error('sasUrl names $upstream but this device has no parent');
    if (!url.pathname.startsWith('/storage/'))
      throw new Error('a sasUrl through the parent names its /storage/CONTAINER path');
    url.hostname = isIP(parentHostname) === 6 ? `[${parentHostname}]` : parentHostname;
    url.port = '443';
  }
  const path = url.pathname.replace(/\/+$/, '');
  url.pathname = `${path}/${blobName.split('/').map(encodeURIComponent).join('/')}`;
  return { url, viaParent };
}

export function blobUploader(o: {
  parentHostname?: string;
  trustPem: string;
  login?: ParentRegistryLogin;
}): BlobUploader {
  const ca = [...rootCertificates, o.trustPem];
  return (sasUrl, blobName, body, contentType) => {
    const { url, viaParent } = uploadTarget(sasUrl, blobName, o.parentHostname);
    const headers: Record<string, string | number> = {
      'x-ms-blob-type': 'BlockBlob',
      'x-ms-version': '2020-10-02',
      'Content-Type': contentType,
      'Content-Length': body.length,
      'Content-MD5': createHash('md5').update(body).digest('base64'),
    };
    if (viaParent && o.login) {
      const { username, password } = o.login();
      headers.Authorization = `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
    }
    return new Promise<void>((resolve, reject) => {
      const req = https.request(url, { method: 'PUT', headers, ca, timeout: 60_000 }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          if (text.length < 2000) text += c.toString();
        });
        res.on('end', () => {
          if (res.statusCode === 201 || res.statusCode === 200) return resolve();
          const code = /<Code>([^<]*)<\/Code>/.exec(text)?.[1];
          const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1];
          reject(
            new Error(
              `upload to ${url.origin}${url.pathname} answered ${res.statusCode} ${code ?? ''} ${message ?? ''}`.trim(),
            ),
          );
        });
      });
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', (err) => reject(new Error(`upload to ${url.origin}: ${err.message}`)));
      req.end(body);
    });
  };
}

/** `{hub}/{device}/{module}-{yyyy-MM-dd--HH-mm-ss}.{log|json}[.gz]`. */
export function logBlobName(
  o: { hub: string; device: string; module: string; json: boolean; gzip: boolean },
  now = new Date(),
): string {
  const t = now.toISOString();
  const stamp = `${t.slice(0, 10)}--${t.slice(11, 19).replace(/:/g, '-')}`;
  return `${o.hub}/${o.device}/${o.module}-${stamp}.${o.json ? 'json' : 'log'}${o.gzip ? '.gz' : ''}`;
}
