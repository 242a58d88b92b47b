// Closed-loop HTTP load: VUS virtual users each POST, wait for the answer, POST again, for
// DURATION (k6 `constant-vus`): concurrency = VUS requests in flight. Used for predict (via
// the gateway, direct to a replica) and for `mlflow models serve`, with the same bodies.
//
// Environment (-e KEY=VALUE):
//   URL       target (required)
//   BODIES    path of a JSON array of request bodies (strings), one AI4I row each (required);
//             VUs cycle through them (a realistic stream: one row repeated is drift)
//   VUS       concurrency (required); DURATION e.g. "10s" (required)
//   SUMMARY   path of the JSON summary (handleSummary's data object)
//   CACHE_CONTROL  sent as Cache-Control when set ("no-cache": predict scores every request)
import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter } from 'k6/metrics';

const bodies = new SharedArray('bodies', () => JSON.parse(open(__ENV.BODIES)));
const url = __ENV.URL;
const headers = { 'Content-Type': 'application/json' };
if (__ENV.CACHE_CONTROL) {
  headers['Cache-Control'] = __ENV.CACHE_CONTROL;
}
const params = {
  headers: headers,
  responseType: 'none',
  timeout: '30s',
};

const ok = new Counter('status_200');
const status5xx = new Counter('status_5xx');
const otherStatus = new Counter('status_other');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    load: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS, 10),
      duration: __ENV.DURATION,
      gracefulStop: '10s',
    },
  },
};

export default function () {
  const res = http.post(url, bodies[exec.scenario.iterationInTest % bodies.length], params);
  if (res.status === 200) {
    ok.add(1);
  } else if (res.status >= 500) {
    status5xx.add(1);
  } else {
    otherStatus.add(1);
  }
}

export function handleSummary(data) {
  // Without SUMMARY, k6 would write a file literally named "undefined": print it instead.
  return { [__ENV.SUMMARY || "stdout"]: JSON.stringify(data) };
}
