import time
from kafka import KafkaProducer, KafkaConsumer, KafkaAdminClient, TopicPartition
from kafka.admin import NewTopic
bs="127.0.0.1:19092"
a=KafkaAdminClient(bootstrap_servers=bs)
try: a.create_topics([NewTopic("t1",3,1)])
except Exception as e: print("create",e)
print(a.describe_topics(["t1"]))
p=KafkaProducer(bootstrap_servers=bs, linger_ms=20, acks="all")
fs=[p.send("t1", key=b"k", value=b"v%d"%i, headers=[("ce_id",b"x")]) for i in range(10)]
p.flush(); print([f.get().offset for f in fs][:10])
c=KafkaConsumer(bootstrap_servers=bs)
tps=[TopicPartition("t1",i) for i in range(3)]
print("end_offsets", c.end_offsets(tps), "beginning", c.beginning_offsets(tps))
t=time.time()
c2=KafkaConsumer("t1", bootstrap_servers=bs, group_id="g1", auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=1000)
n=0
while n<10 and time.time()-t<30:
    r=c2.poll(500)
    for tp,ms in r.items(): n+=len(ms)
print("consumed",n,"in",time.time()-t)
c2.commit(); print(a.list_group_offsets("g1") if hasattr(a,"list_group_offsets") else a.list_consumer_group_offsets("g1"))
