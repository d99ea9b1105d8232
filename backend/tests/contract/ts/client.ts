// A small Task API client on plain fetch. Every request, response and error type comes from
// `api.d.ts`, generated from specs/001-backend-core-api/contracts/openapi.yaml, so a breaking
// change to the contract (a renamed field, a removed enum value, a nullable title) fails `tsc`.
import type { components, paths } from "./api";

type Task = components["schemas"]["TaskRead"];
type TaskPage = components["schemas"]["TaskPage"];
type TaskId = paths["/api/tasks/{task_id}"]["get"]["parameters"]["path"]["task_id"];
type NewTask = paths["/api/tasks"]["post"]["requestBody"]["content"]["application/json"];
type TaskChanges = paths["/api/tasks/{task_id}"]["patch"]["requestBody"]["content"]["application/json"];
type ListQuery = NonNullable<paths["/api/tasks"]["get"]["parameters"]["query"]>;
type Problem = paths["/api/tasks/{task_id}"]["patch"]["responses"][412]["content"]["application/problem+json"];
type ValidationProblem = components["schemas"]["ValidationProblemDetail"];
// POST's 422 is either invalid input (with `errors`) or a reused Idempotency-Key (without).
type CreateProblem = paths["/api/tasks"]["post"]["responses"][422]["content"]["application/problem+json"];

/** A problem+json answer (RFC 9457); `errors` is there on 422 only. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem | ValidationProblem,
  ) {
    super(`${problem.status} ${problem.title}: ${problem.detail}`);
  }

  get errors(): ValidationProblem["errors"] {
    return "errors" in this.problem ? this.problem.errors : [];
  }
}

/** A task with the strong ETag to send back as If-Match. */
export interface Versioned {
  task: Task;
  etag: string;
}

export class TaskClient {
  constructor(
    private readonly baseUrl: string,
    private readonly token: string,
  ) {}

  async create(task: NewTask, idempotencyKey?: string): Promise<Versioned> {
    const headers: Record<string, string> = idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {};
    const response = await this.send("POST", "/api/tasks", { body: task, headers });
    return { task: (await response.json()) as Task, etag: response.headers.get("ETag") ?? "" };
  }

  async list(query: ListQuery = {}): Promise<TaskPage> {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined) search.set(name, String(value));
    }
    const response = await this.send("GET", `/api/tasks?${search.toString()}`);
    return (await response.json()) as TaskPage;
  }

  async update(id: TaskId, changes: TaskChanges, ifMatch?: string): Promise<Versioned> {
    const headers: Record<string, string> = ifMatch ? { "If-Match": ifMatch } : {};
    const response = await this.send("PATCH", `/api/tasks/${id}`, { body: changes, headers });
    return { task: (await response.json()) as Task, etag: response.headers.get("ETag") ?? "" };
  }

  async remove(id: TaskId, ifMatch?: string): Promise<void> {
    await this.send("DELETE", `/api/tasks/${id}`, { headers: ifMatch ? { "If-Match": ifMatch } : {} });
  }

  private async send(
    method: string,
    path: string,
    init: { body?: unknown; headers?: Record<string, string> } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.token}`, ...init.headers };
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(new URL(path, this.baseUrl), {
      method,
      headers,
      ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
    });
    if (!response.ok) {
      // Every error of every route is application/problem+json (the contract says so).
      throw new ApiError(response.status, (await response.json()) as Problem | ValidationProblem | CreateProblem);
    }
    return response;
  }
}

/** Create, list, patch and delete a task: what a frontend does, checked by the compiler. */
export async function roundTrip(client: TaskClient): Promise<string[]> {
  const { task, etag } = await client.create({
    title: "Write the launch post",
    priority: "high",
    due_date: "2026-12-01T17:00:00Z",
  });
  const page = await client.list({ status: "pending", sort: "-priority", q: "launch", limit: 20, offset: 0 });
  const { task: done, etag: doneEtag } = await client.update(task.id, { status: "completed", description: null }, etag);
  await client.remove(done.id, doneEtag);

  // The enums are closed: a new or renamed value breaks this exhaustive switch.
  const label = (status: Task["status"]): string => {
    switch (status) {
      case "pending":
        return "to do";
      case "in_progress":
        return "doing";
      case "completed":
        return "done";
    }
  };
  const total: number = page.total;
  return [
    `${total} matching`,
    ...page.items.map((t) => `${t.title} [${label(t.status)}, ${t.priority}] due ${t.due_date ?? "never"} (${t.user_id})`),
  ];
}

// What the contract forbids must not compile: each line below is an error, and if the contract
// loosened (title nullable in a PATCH, extra body fields, a sort key that does not exist) the
// `@ts-expect-error` itself becomes the error.
export async function forbidden(client: TaskClient, id: TaskId): Promise<void> {
  // @ts-expect-error title cannot be cleared
  await client.update(id, { title: null });
  // @ts-expect-error the owner comes from the token, never from the body
  await client.create({ title: "x", user_id: "someone-else" });
  // @ts-expect-error no such sort key
  await client.list({ sort: "owner" });
  // @ts-expect-error status is an enum
  await client.update(id, { status: "archived" });
}
