// The local stack's IAM judge: reads one JSON request per line on stdin, answers one JSON line per
// request on stdout. A request is {"id", "simulations": [Simulation, ...]} in the shape of
// @cloud-copilot/iam-simulate; the answer is {"id", "results": [{"decision", "detail"}]} with
// decision Allowed, ExplicitlyDenied, ImplicitlyDenied, or Invalid (the simulation was refused:
// an ARN that is not a resource type of the action, a malformed policy; detail says why).
//
// Test tooling only: this evaluator (AGPL-3.0) runs beside the local stack, never in a function.
import { createInterface } from 'node:readline'
import { runSimulation } from '@cloud-copilot/iam-simulate'

async function judge(simulation) {
  try {
    const outcome = await runSimulation(simulation, {})
    if (outcome.resultType === 'error') {
      return { decision: 'Invalid', detail: outcome.errors.message + ' ' + JSON.stringify(outcome.errors) }
    }
    return { decision: outcome.overallResult, detail: '' }
  } catch (error) {
    return { decision: 'Invalid', detail: String(error && error.stack ? error.stack : error) }
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (!line.trim()) continue
  let request
  try {
    request = JSON.parse(line)
  } catch (error) {
    process.stdout.write(JSON.stringify({ id: null, error: String(error) }) + '\n')
    continue
  }
  const results = []
  for (const simulation of request.simulations) {
    results.push(await judge(simulation))
  }
  process.stdout.write(JSON.stringify({ id: request.id, results }) + '\n')
}
