import rhea, { type Message as AmqpMessage, type Receiver } from 'rhea';
import type { EventStreamReader } from '../../../model/events.ts';
import { AccessDenied, authenticatePolicyToken, requireRight } from '../../../identity/policies.ts';
import { CONDITION } from '../errors.ts';
import { CreditWindow } from '../links.ts';
import type { LinkContext, LinkRoute } from '../types.ts';
import { ReplyLink, replyLinkFor } from '../reply-link.ts';
import { echoId } from '../message.ts';
import { parseManagementAddress, partitionIndex, sameName } from './entity.ts';

/**
 * The `$management` node of the Event Hubs endpoint: READ requests for the entity (name,
 * creation time, partition ids) and for one partition (first and last sequence numbers, last
 * offset and enqueued time, emptiness). Clients send a request on a sender link to
 * `$management` and read the answer, matched by correlation id, on a receiver link from it.
 */

export interface ManagementDeps {
  entity: string;
  stream: EventStreamReader;
  /** When the event stream was created (epoch ms). */
  createdAt(): number;
}

interface Answer {
  status: number;
  description: string;
  condition?: string;
  body?: Record<string, unknown>;
}

const TYPE_ENTITY = 'com.microsoft:eventhub';
const TYPE_PARTITION = 'com.microsoft:partition';
const REQUEST_CREDIT = 50;

function notFound(description: string): Answer {
  return { status: 404, condition: CONDITION.notFound, description };
}

/** Who may read: a `security_token` in the request, else a token put on $cbs for the entity. */
function authorize(ctx: LinkContext, entity: string, securityToken: unknown): Answer | undefined {
  const { checker, hostNames } = ctx.conn.shared;
  if (typeof securityToken === 'string' && securityToken !== '') {
    try {
      const { policy } = authenticatePolicyToken(securityToken, {
        hostnames: hostNames,
        policy: checker.policy,
        resourcePath: `/${entity}`,
      });
      requireRight(policy, ['ServiceConnect'], 'read the Event Hubs compatible endpoint');
      return undefined;
    } catch (err) {
      const description = err instanceof AccessDenied ? err.message : 'the security token could not be checked';
      return { status: 401, condition: CONDITION.unauthorized, description };
    }
  }
  if (ctx.conn.claims.policyWith(['ServiceConnect'], hostNames, `/${entity}/$management`)) return undefined;
  return {
    status: 401,
    condition: CONDITION.unauthorized,
    description: `reading ${entity} needs a shared access policy with ServiceConnect (e.g. iothubowner or service): send its token as security_token or put it on $cbs for sb://${hostNames[0]}/${entity}`,
  };
}

export function answerManagementRequest(ctx: LinkContext, deps: ManagementDeps, msg: AmqpMessage): Answer {
  const app = (msg.application_properties ?? {}) as Record<string, unknown>;
  const operation = String(app.operation ?? '');
  const type = String(app.type ?? '');
  const name = app.name === undefined ? '' : String(app.name);
  if (operation.toUpperCase() !== 'READ') {
    return {
      status: 400,
      condition: CONDITION.notImplemented,
      description: `unsupported $management operation "${operation}": this endpoint answers READ of ${TYPE_ENTITY} and ${TYPE_PARTITION}`,
    };
  }
  if (type !== TYPE_ENTITY && type !== TYPE_PARTITION) {
    return {
      status: 400,
      condition: CONDITION.argument,
      description: `unsupported $management type "${type}": use ${TYPE_ENTITY} or ${TYPE_PARTITION}`,
    };
  }
  const host = ctx.conn.shared.hostNames[0];
  if (!sameName(name, deps.entity)) {
    return notFound(
      `The messaging entity 'sb://${host}/${name}' could not be found: this hub's Event Hubs entity is '${deps.entity}'`,
    );
  }
  const denied = authorize(ctx, deps.entity, app.security_token);
  if (denied) return denied;

  const count = deps.stream.partitionCount();
  if (type === TYPE_ENTITY) {
    return {
      status: 200,
      description: 'OK',
      body: {
        name: deps.entity,
        type: TYPE_ENTITY,
        created_at: new Date(deps.createdAt()),
        partition_count: rhea.types.wrap_int(count),
        partition_ids: Array.from({ length: count }, (_, i) => String(i)),
      },
    };
  }
  const id = app.partition === undefined ? '' : String(app.partition);
  const index = partitionIndex(id, count);
  if (index === undefined) {
    return notFound(`partition '${id}' does not exist in ${deps.entity}: its partitions are 0 to ${count - 1}`);
  }
  const info = deps.stream.partitionInfo(index);
  return {
    status: 200,
    description: 'OK',
    body: {
      name: deps.entity,
      type: TYPE_PARTITION,
      partition: id,
      begin_sequence_number: rhea.types.wrap_long(info.beginSequenceNumber),
      last_enqueued_sequence_number: rhea.types.wrap_long(info.lastSequenceNumber),
      last_enqueued_offset: String(info.lastOffset),
      last_enqueued_time_utc: new Date(info.lastEnqueuedTime ?? 0),
      is_partition_empty: info.isEmpty,
    },
  };
}

function respond(ctx: LinkContext, request: AmqpMessage, answer: Answer): void {
  const replyTo = request.reply_to ? String(request.reply_to) : undefined;
  const responder = replyLinkFor(ctx, '$management', replyTo);
  if (!responder) {
    ctx.conn.log.warn({ replyTo }, '$management request without a $management receiver link to answer on');
    return;
  }
  const app: Record<string, unknown> = {
    'status-code': rhea.types.wrap_int(answer.status),
    'status-description': answer.description,
  };
  if (answer.condition) app['error-condition'] = answer.condition;
  const response: AmqpMessage = { application_properties: app, body: answer.body ?? null };
  if (request.message_id !== undefined) response.correlation_id = echoId(request.message_id) as string;
  if (replyTo) response.to = replyTo;
  responder.queue.push(response);
}

export function managementRoutes(deps: ManagementDeps): LinkRoute[] {
  const matches = (path: string): true | undefined => {
    const m = parseManagementAddress(path);
    // `{other}/$management` is not ours to answer; a bare `$management` is.
    return m && (m.entity === undefined || sameName(m.entity, deps.entity)) ? true : undefined;
  };
  const requests: LinkRoute = {
    name: 'event hubs $management requests',
    role: 'receiver',
    anonymous: true,
    match: (path) => matches(path),
    open: (ctx) => {
      const credit = new CreditWindow(ctx.link as Receiver, REQUEST_CREDIT);
      credit.start();
      return {
        message(msg, delivery) {
          credit.took();
          delivery.accept();
          let answer: Answer;
          try {
            answer = answerManagementRequest(ctx, deps, msg);
          } catch (err) {
            ctx.conn.log.error({ err }, '$management request failed');
            answer = { status: 500, condition: CONDITION.internal, description: 'internal error' };
          }
          if (answer.status !== 200) {
            const app = (msg.application_properties ?? {}) as Record<string, unknown>;
            ctx.conn.log.warn(
              { type: app.type, name: app.name, status: answer.status, reason: answer.description },
              '$management request refused',
            );
          }
          respond(ctx, msg, answer);
          credit.done();
        },
      };
    },
  };
  const responses: LinkRoute = {
    name: 'event hubs $management responses',
    role: 'sender',
    anonymous: true,
    match: (path) => matches(path),
    open: (ctx) => new ReplyLink(ctx, '$management'),
  };
  return [requests, responses];
}
