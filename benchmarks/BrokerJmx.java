// A Kafka broker's request counters over JMX, for benchmarks/broker_probe.py.
//
//     java BrokerJmx.java 127.0.0.1:PORT counts
//     java BrokerJmx.java 127.0.0.1:PORT loglevel kafka.request.logger DEBUG
//
// `counts` prints one line per counter, "name<TAB>value": requests by type (all API
// versions summed), the mean bytes of a request by type, and the records and bytes the
// broker took in and sent out. `loglevel` sets one of the broker's log4j loggers.

import java.util.Map;
import java.util.TreeMap;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class BrokerJmx {
    public static void main(String[] args) throws Exception {
        JMXServiceURL url = new JMXServiceURL("service:jmx:rmi:///jndi/rmi://" + args[0] + "/jmxrmi");
        try (JMXConnector connector = JMXConnectorFactory.connect(url)) {
            MBeanServerConnection server = connector.getMBeanServerConnection();
            if (args[1].equals("loglevel")) {
                ObjectName controller = new ObjectName("kafka:type=kafka.Log4jController");
                Object done = server.invoke(controller, "setLogLevel", new Object[] {args[2], args[3]},
                        new String[] {String.class.getName(), String.class.getName()});
                System.out.println(done);
                return;
            }
            Map<String, Double> out = new TreeMap<>();
            for (ObjectName name : server.queryNames(
                    new ObjectName("kafka.network:type=RequestMetrics,name=RequestsPerSec,*"), null)) {
                String key = "requests." + name.getKeyProperty("request");
                long count = (Long) server.getAttribute(name, "Count");
                out.merge(key, (double) count, Double::sum);
            }
            for (ObjectName name : server.queryNames(
                    new ObjectName("kafka.network:type=RequestMetrics,name=RequestBytes,*"), null)) {
                out.put("request_bytes_mean." + name.getKeyProperty("request"),
                        (Double) server.getAttribute(name, "Mean"));
            }
            for (String metric : new String[] {"MessagesInPerSec", "BytesInPerSec", "BytesOutPerSec",
                    "TotalProduceRequestsPerSec", "TotalFetchRequestsPerSec"}) {
                ObjectName name = new ObjectName("kafka.server:type=BrokerTopicMetrics,name=" + metric);
                out.put("broker." + metric, ((Long) server.getAttribute(name, "Count")).doubleValue());
            }
            for (Map.Entry<String, Double> e : out.entrySet()) {
                System.out.println(e.getKey() + "\t" + e.getValue());
            }
        }
    }
}
