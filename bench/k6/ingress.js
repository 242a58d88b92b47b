// Offered load on the broker ingress: binary-mode CloudEvents (sample.ping) at a fixed
// arrival rate (k6 `constant-arrival-rate`: a new request every 1/RATE s, whether or not the
// previous ones were answered, so a slow ingress shows as latency and dropped iterations,
// never as a lower offered rate hidden by the client).
//
// Environment (-e KEY=VALUE):
//   URL          ingress URL (required)
//   PREFIX       ce-id prefix, unique per run (required); ids are PREFIX + iteration in test
//   RATE         events/s offered (required)
//   DURATION     e.g. "10s" (required)
//   TYPE, SOURCE CloudEvent type/source (default: the ping the noop function subscribes to)
//   VUS          pre-allocated VUs (default RATE/10, at least 50: answers up to 100 ms need no
//                VU started mid-run); MAX_VUS (default RATE/2, at least 200, at most 2000)
//   SUMMARY      path of the JSON summary (handleSummary's data object)
//
// The send time travels in the event data as {"message": "t=<unix seconds>"}: the noop
// function appends "<ce-id> <message> <arrival time>" per delivered event.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const rate = parseInt(__ENV.RATE, 10);
const vus = parseInt(__ENV.VUS || `${Math.max(50, Math.ceil(rate / 10))}`, 10);
const maxVus = parseInt(__ENV.MAX_VUS || `${Math.max(vus, Math.min(2000, Math.max(200, rate / 2)))}`, 10);
const url = __ENV.URL;
const prefix = __ENV.PREFIX;
const headers = {
  'ce-specversion': '1.0',
  'ce-source': __ENV.SOURCE || '/faaspipe/bench/broker-throughput',
  'ce-type': __ENV.TYPE || 'dev.faaspipe.sample.ping.v1',
  'content-type': 'application/json',
};

const accepted = new Counter('accepted_202');
const status5xx = new Counter('status_5xx');
const otherStatus = new Counter('status_other');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    ingress: {
      executor: 'constant-arrival-rate',
      rate: rate,
      timeUnit: '1s',
      duration: __ENV.DURATION,
      preAllocatedVUs: vus,
      maxVUs: maxVus,
      gracefulStop: '30s',
    },
  },
};

export default function () {
  const id = `${prefix}${exec.scenario.iterationInTest}`;
  const body = `{"message": "t=${(Date.now() / 1000).toFixed(3)}"}`;
  const res = http.post(url, body, {
    headers: Object.assign({ 'ce-id': id }, headers),
    responseType: 'none',
    timeout: '30s',
  });
  if (res.status === 202) {
    accepted.add(1);
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
